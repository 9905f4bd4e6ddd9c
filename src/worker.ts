import type { Sql } from "postgres";
import { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
import { Leases } from "./client/leases.ts";
import type { PoolEnv } from "./core/index.ts";
import { closeConnection, connectFromWorker } from "./db/hyperdrive.ts";
import { CircuitBreaker } from "./db/circuit-breaker.ts";
import { type DatabaseConfig, type DatabaseEnv, databaseConfig } from "./db/config.ts";
import { openDriver } from "./db/connect.ts";
import { Database } from "./db/database.ts";
import { toDatabaseError } from "./db/errors.ts";
import { countConnections } from "./db/reconcile.ts";
import { SafeMode } from "./db/safe-mode.ts";
import { type AppDeps, type OperatorControls, type WithDatabase, handle } from "./http/app.ts";
import { errorResponse } from "./http/respond.ts";

export { ConnectionCoordinator };

export interface Env extends PoolEnv, DatabaseEnv {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string;
  DEBUG_TOKEN?: string;
  /** Pool name: one coordinator object per name. */
  LEASE_POOL?: string;
  /** `application_name` of the Worker's connections, to find them in `pg_stat_activity`. */
  APPLICATION_NAME?: string;
}

// Per isolate, per pool: the breaker and the safe-mode budget outlive a request, so that one
// request's failures spare the next ones the wait.
const isolate = new Map<string, { breaker: CircuitBreaker; safeMode: SafeMode }>();
// Validated once per env object (once per isolate in production), not on every request.
const configs = new WeakMap<Env, DatabaseConfig>();

/**
 * The Worker's wiring of the example app: leases from the pool's coordinator, connections through
 * Hyperdrive. Exported so tests can drive `handle` with the real wiring on a pool of their own.
 *
 * @example
 * handle(request, depsFor({ ...env, LEASE_POOL: "fuzz" }, ctx))
 */
export function depsFor(env: Env, ctx: ExecutionContext): AppDeps {
  const pool = env.LEASE_POOL || "main";
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const config = configs.get(env) ?? databaseConfig(env);
  configs.set(env, config);
  let kept = isolate.get(pool);
  if (!kept) {
    kept = { breaker: new CircuitBreaker(pool, config.breaker), safeMode: new SafeMode(config.safeMode) };
    isolate.set(pool, kept);
  }
  const off = env.COORDINATOR === "off";
  const coordinator = off ? undefined : env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName(pool));
  const leases = coordinator && new Leases(coordinator);
  const db = new Database({ name: pool, driver: openDriver(config), leases, config, ...kept, waitUntil });
  const withDatabase: WithDatabase = (fn, { holder, waitMs }) =>
    db.run(
      async ({ beforeRelease }) => {
        const sql: Sql = connectFromWorker(config.connectionString, config.applicationName);
        beforeRelease(() => closeConnection(sql));
        return db.timed(holder, () => fn(sql), holder);
      },
      { holder, waitMs },
    );
  return {
    withDatabase,
    stats: leases && (() => leases.stats()),
    debugToken: env.DEBUG_TOKEN,
    pool,
    operator: coordinator && operatorFor(env, coordinator),
    status: () => db.status(),
  };
}

// A Worker's main module may export only handlers and classes: these helpers stay private.

/** `application_name` of the reconciliation's own connection (it never counts itself). */
const OBSERVER_APPLICATION_NAME = "leasegate-reconcile";

/**
 * Reads `pg_stat_activity` through one short-lived connection outside any lease (an observer must
 * not wait behind the pool it observes) and lets the coordinator compare it with its leases.
 */
async function reconcileNow(env: Env, coordinator: DurableObjectStub<ConnectionCoordinator>) {
  const sql = connectFromWorker(env.HYPERDRIVE.connectionString, OBSERVER_APPLICATION_NAME);
  try {
    const counts = await countConnections(sql, env.APPLICATION_NAME || "leasegate");
    return await coordinator.reconcile(counts);
  } catch (error) {
    throw toDatabaseError(error);
  } finally {
    await closeConnection(sql);
  }
}

function operatorFor(env: Env, coordinator: DurableObjectStub<ConnectionCoordinator>): OperatorControls {
  return {
    stats: () => coordinator.operatorStats(),
    pause: () => coordinator.pause(),
    resume: () => coordinator.resume(),
    setLimit: (limit) => coordinator.setLimit(limit),
    revoke: (id) => coordinator.revoke(id),
    reconcile: () => reconcileNow(env, coordinator),
  };
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    let deps: AppDeps;
    try {
      deps = depsFor(env, ctx);
    } catch (error) {
      // INVALID_CONFIG: the message names the variable and never echoes a password.
      return errorResponse(error);
    }
    return handle(request, deps);
  },
  // Periodic reconciliation (the cron in wrangler.toml); on demand: POST /__coordinator/reconcile.
  async scheduled(_controller, env, _ctx): Promise<void> {
    if (env.COORDINATOR === "off") return;
    const pool = env.LEASE_POOL || "main";
    // Awaited, so a failed run (database down) shows as a failed cron invocation.
    await reconcileNow(env, env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName(pool)));
  },
} satisfies ExportedHandler<Env>;
