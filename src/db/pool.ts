import type { Sql } from "postgres";
import type { LeaseClient } from "../client/leases.ts";
import type { OperatorControls } from "../http/operator.ts";
import type { CallOptions, Database } from "./database.ts";

/**
 * One pool as an app uses it, the same on Workers (`workerPool`) and on Node or Deno
 * (`localPool`): its leases, the database layer over them, and the operator's controls.
 *
 * @example
 * const rows = await pool.sql((sql) => sql`SELECT 1 AS one`, { holder: "req-1" });
 */
export interface LeasedPool {
  readonly name: string;
  /** The pool's leases; undefined with `COORDINATOR=off`. */
  readonly leases: LeaseClient | undefined;
  /** Queries and transactions under leases, with retries, the breaker and safe mode. */
  readonly db: Database;
  /** What the operator endpoints drive; undefined with `COORDINATOR=off`. */
  readonly operator: OperatorControls | undefined;
  /**
   * Runs `fn` with a postgres.js client on one fresh connection under one lease, with the database
   * layer's policies (a retryable failure runs `fn` again on a new connection and a new lease).
   */
  sql<T>(fn: (sql: Sql) => Promise<T>, options?: CallOptions): Promise<T>;
}

/**
 * The `sql` of a pool: `fn` gets a postgres.js client on one fresh connection (`open`) under one
 * lease of the database layer; `close` ends that connection before the slot is given back. The
 * client's work is timed as one unit (labelled by the holder) for the slow-query log.
 *
 * @example
 * const sql = leasedSql(db, () => postgresClient(config), (c) => c.end({ timeout: 0 }));
 */
export function leasedSql(db: Database, open: () => Sql | Promise<Sql>, close: (sql: Sql) => Promise<unknown>): LeasedPool["sql"] {
  return (fn, options = {}) =>
    db.run(async ({ beforeRelease }) => {
      const sql = await open();
      beforeRelease(() => close(sql).catch(() => {}));
      return db.timed(options.holder ?? "sql", () => fn(sql), options.holder);
    }, options);
}
