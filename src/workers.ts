/**
 * leasegate for Cloudflare Workers: the coordinator Durable Object, the pool of a request wired
 * from env (`workerPool`: leases, the database layer over Hyperdrive, the operator's controls),
 * and the cron handler that reconciles leases with `pg_stat_activity`. The driver comes from
 * `leasegate/postgres`, `leasegate/pg` or `leasegate/neon`; errors and types from `leasegate`.
 *
 * @example
 * import { ConnectionCoordinator, reconcileOnSchedule, workerPool } from "leasegate/workers";
 * import { driver } from "leasegate/postgres";
 * export { ConnectionCoordinator };
 * export default {
 *   fetch: async (req, env, ctx) => Response.json(await workerPool(env, ctx, { driver }).sql((sql) => sql`SELECT now()`)),
 *   scheduled: reconcileOnSchedule({ driver }),
 * } satisfies ExportedHandler<Env>;
 */
import { LeaseError } from "./core/errors.ts";
import type { DriverModule } from "./db/driver.ts";
import { type WorkerPoolEnv, workerPool } from "./workers/pool.ts";

export { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
export { workerPool } from "./workers/pool.ts";
export type { WorkerPoolEnv, WorkerPoolOptions } from "./workers/pool.ts";

/**
 * A `scheduled` handler (the cron in `wrangler.toml`'s `[triggers]`) that reconciles the pool's
 * leases with the database's own count of connections (`pg_stat_activity`), as
 * `POST /__coordinator/reconcile` does on demand; with `LEASE_LIMIT=auto` it learns the limit
 * first, as `POST /__coordinator/learn` does. A failed run (database down) rejects after both, so it shows
 * as a failed cron invocation. Does nothing with `COORDINATOR=off`.
 *
 * @example
 * export default { fetch, scheduled: reconcileOnSchedule({ driver }) } satisfies ExportedHandler<Env>;
 */
export function reconcileOnSchedule<Client>(options: {
  driver: DriverModule<Client>;
  pool?: string | undefined;
}): (controller: unknown, env: WorkerPoolEnv, ctx: { waitUntil(promise: Promise<unknown>): void }) => Promise<void> {
  return async (_controller, env, ctx) => {
    const operator = workerPool(env, ctx, options).operator;
    const learned = await operator?.learn?.();
    await operator?.reconcile();
    // The coordinator kept the failed reading for operators; the cron run shows it failed too.
    if (learned && !learned.ok) throw new LeaseError(learned.code, learned.message);
  };
}
