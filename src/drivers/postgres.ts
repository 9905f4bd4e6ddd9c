/**
 * leasegate with postgres.js (`npm install postgres`, 3.4.5 or later, or 4.x): the driver to pass to
 * `workerPool` (or `localPool`). This entry imports `postgres` and nothing of the other drivers,
 * so a Worker bundles only postgres.js.
 *
 * @example
 * import { driver } from "leasegate/postgres";
 * import { workerPool } from "leasegate/workers";
 * const pool = workerPool(env, ctx, { driver });
 * const rows = await pool.sql((sql) => sql`SELECT now()`);
 */
import postgres from "postgres";
import { postgresJsDriver } from "../db/drivers/postgres-js.ts";

export const driver = postgresJsDriver(postgres);
