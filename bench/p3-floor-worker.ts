/**
 * P3's floor: the pitches Worker with the coordinator off (`COORDINATOR=off`), making
 * `FLOOR_CALLS` no-op Durable Object calls per request (0, 1 or 2; default 2) — one before the
 * work, where an acquire goes, and one after it in the background, where `withLease`'s release
 * goes — on one stub per request, the way a request's `Leases` makes its calls. Under `wrangler
 * dev` the Worker and every Durable Object share one workerd thread, so this is what any admission
 * that makes its own coordinator calls per request costs there, whatever it decides.
 * `bench/overload.sh` runs it with `bench/wrangler.p3-floor.toml`.
 */
import worker, { type Env as AppEnv } from "../examples/pitches/src/worker.ts";
import type { NoopObject } from "./coordinator-bench-worker.ts";

export { NoopObject } from "./coordinator-bench-worker.ts";

interface Env extends AppEnv {
  NOOP_DO: DurableObjectNamespace<NoopObject>;
  FLOOR_CALLS?: string;
}

/** The no-op object's id, derived once per isolate (as `workerPool` keeps coordinator ids). */
let noopId: DurableObjectId | undefined;

export default {
  async fetch(request, env, ctx): Promise<Response> {
    const calls = Number(env.FLOOR_CALLS ?? "2");
    noopId ??= env.NOOP_DO.idFromName("floor");
    const stub = env.NOOP_DO.get(noopId);
    if (calls >= 1) await stub.ping();
    const response = await worker.fetch(request, env, ctx);
    if (calls >= 2) ctx.waitUntil(stub.ping());
    return response;
  },
} satisfies ExportedHandler<Env>;
