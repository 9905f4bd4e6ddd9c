/**
 * The pitches app as a Worker: the coordinator Durable Object, the pool wired from env
 * (`workerPool`), the app's routes and the operator endpoints, and a cron that reconciles the
 * leases with `pg_stat_activity` once a minute.
 */
import { ConnectionCoordinator, type WorkerPoolEnv, reconcileOnSchedule, workerPool } from "leasegate/workers";
import { driver } from "leasegate/postgres";
import { errorResponse } from "leasegate/http";
import { type AppDeps, type RequestTiming, handle } from "./app.ts";

export { ConnectionCoordinator };

export interface Env extends WorkerPoolEnv {
  DEBUG_TOKEN?: string;
}

/**
 * The app's wiring for one request. Exported so tests can drive `handle` with the real wiring on a
 * pool of their own.
 *
 * @example
 * handle(request, depsFor({ ...env, LEASE_POOL: "fuzz" }, ctx))
 */
export function depsFor(env: Env, ctx: ExecutionContext, timing: RequestTiming = {}): AppDeps {
  return { pool: workerPool(env, ctx, { driver }), debugToken: env.DEBUG_TOKEN, timing };
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    let deps: AppDeps;
    const timing: RequestTiming = {};
    try {
      deps = depsFor(env, ctx, timing);
    } catch (error) {
      // INVALID_CONFIG: the message names the variable and never echoes a password.
      return errorResponse(error);
    }
    const started = Date.now();
    const response = await handle(request, deps);
    // Time inside the Worker (workerd's clock moves with I/O), split into the lease wait and the
    // query, so load tests can tell them from each other and from time spent in front of the Worker.
    const parts = [`app;dur=${Date.now() - started}`];
    if (timing.leaseMs !== undefined) parts.push(`lease;dur=${timing.leaseMs}`);
    if (timing.dbMs !== undefined) parts.push(`db;dur=${timing.dbMs}`);
    response.headers.set("Server-Timing", parts.join(", "));
    return response;
  },
  // Periodic reconciliation (the cron in wrangler.toml); on demand: POST /__coordinator/reconcile.
  // A failed run (database down) shows as a failed cron invocation.
  scheduled: reconcileOnSchedule({ driver }),
} satisfies ExportedHandler<Env>;
