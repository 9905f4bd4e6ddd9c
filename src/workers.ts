/**
 * leasegate for Cloudflare Workers: the coordinator Durable Object, a pool wired from env (leases,
 * the database layer over Hyperdrive, the operator's controls), and a one-call way to query under
 * a lease. Everything in `leasegate` is here too.
 *
 * @example
 * import { ConnectionCoordinator, workerPool } from "leasegate/workers";
 * export { ConnectionCoordinator };
 */
import type { Sql } from "postgres";
import { Leases } from "./client/leases.ts";
import type { AcquireOptions } from "./core/protocol.ts";
import { toDatabaseError } from "./db/errors.ts";
import { closeConnection, connectFromWorker } from "./db/hyperdrive.ts";
import type { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";

export { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
export { closeConnection, connectFromWorker } from "./db/hyperdrive.ts";
export { toDatabaseError } from "./db/errors.ts";
export * from "./index.ts";
export { workerPool } from "./workers/pool.ts";
export type { WorkerPoolEnv } from "./workers/pool.ts";

export interface LeasedQueryOptions extends AcquireOptions {
  /** The coordinator namespace binding (the Durable Object class exported above, or bound from another Worker). */
  coordinator: DurableObjectNamespace<ConnectionCoordinator>;
  /** The Hyperdrive binding (or anything with a `connectionString`). */
  hyperdrive: { connectionString: string };
  /** The request's execution context: the release runs in `ctx.waitUntil`, off the response path. */
  ctx: { waitUntil(promise: Promise<unknown>): void };
  /** Pool name: one coordinator object per name. Default `main`. */
  pool?: string | undefined;
  /** `application_name` of the connection, to find it in `pg_stat_activity`. */
  applicationName?: string | undefined;
}

/**
 * Runs `fn` with one Postgres connection while holding one lease: acquire (waiting in the pool's
 * queue), connect through Hyperdrive, run, then close the connection and release the slot in the
 * background. Failures are `LeaseError`s with stable codes.
 *
 * @example
 * const rows = await leasedQuery((sql) => sql`SELECT now()`, {
 *   coordinator: env.COORDINATOR_DO, hyperdrive: env.HYPERDRIVE, ctx,
 * });
 */
export async function leasedQuery<T>(fn: (sql: Sql) => Promise<T>, options: LeasedQueryOptions): Promise<T> {
  const { coordinator, hyperdrive, ctx, pool = "main", applicationName, ...acquire } = options;
  const leases = new Leases(coordinator.get(coordinator.idFromName(pool)));
  return leases.withLease(
    async ({ beforeRelease }) => {
      const sql = connectFromWorker(hyperdrive.connectionString, applicationName);
      beforeRelease(() => closeConnection(sql));
      try {
        return await fn(sql);
      } catch (error) {
        throw toDatabaseError(error);
      }
    },
    { ...acquire, waitUntil: (p) => ctx.waitUntil(p) },
  );
}
