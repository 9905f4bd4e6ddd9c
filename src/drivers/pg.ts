/**
 * leasegate with node-postgres (`npm install pg`, 8.13 or later): the driver to pass to `workerPool`
 * (or `localPool`). This entry imports `pg` and nothing of the other drivers, so a Worker bundles
 * only node-postgres. `pool.sql(fn)` hands `fn` a connected `pg.Client`.
 *
 * @example
 * import { driver } from "leasegate/pg";
 * import { workerPool } from "leasegate/workers";
 * const pool = workerPool(env, ctx, { driver });
 * const { rows } = await pool.sql((client) => client.query("SELECT now()"));
 */
import pg from "pg";
import { pgDriver } from "../db/drivers/node-postgres.ts";

export const driver = pgDriver(pg);
