import type { LeaseClient } from "../client/leases.ts";
import type { OperatorControls } from "../http/operator.ts";
import type { CallOptions, Database } from "./database.ts";
import type { ClientConnection, Driver } from "./driver.ts";

/**
 * One pool as an app uses it, the same on Workers (`workerPool`) and on Node or Deno
 * (`localPool`): its leases, the database layer over them, and the operator's controls.
 *
 * @example
 * const rows = await pool.sql((sql) => sql`SELECT 1 AS one`, { holder: "req-1" });
 */
export interface LeasedPool<Client = unknown> {
  readonly name: string;
  /** The pool's leases; undefined with `COORDINATOR=off`. */
  readonly leases: LeaseClient | undefined;
  /** Queries and transactions under leases, with retries, the breaker and safe mode. */
  readonly db: Database;
  /** What the operator endpoints drive; undefined with `COORDINATOR=off`. */
  readonly operator: OperatorControls | undefined;
  /**
   * Runs `fn` with the driver's own client (postgres.js `Sql`, `pg.Client`, Neon `PoolClient`) on
   * one fresh connection under one lease, with the database layer's policies (a retryable failure
   * runs `fn` again on a new connection and a new lease, so `fn` may run more than once).
   */
  sql<T>(fn: (client: Client) => Promise<T>, options?: CallOptions): Promise<T>;
}

/**
 * The `sql` of a pool: `fn` gets the driver's own client on one fresh connection under one lease
 * of the database layer; the connection is closed before the slot is given back. It starts with
 * the deadline's `statement_timeout`; when the deadline passes or the lease is lost, what runs on
 * it is cancelled and it is closed, and the call fails with `DEADLINE_EXCEEDED` / `LEASE_LOST`
 * (`executed: "maybe"`). The client's work is timed as one unit (labelled by the holder) for the
 * slow-query log.
 *
 * @example
 * const sql = leasedSql(db, bindDriver(driver, config));
 */
export function leasedSql<Client>(db: Database, driver: Driver<ClientConnection<Client>>): LeasedPool<Client>["sql"] {
  return (fn, options = {}) =>
    db.run(async ({ connect }) => {
      const conn = await connect(driver);
      return db.timed(options.holder ?? "sql", () => fn(conn.client), options.holder);
    }, options);
}
