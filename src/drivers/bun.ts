/**
 * leasegate with Bun's own SQL client (`Bun.SQL`, Bun 1.2 or later; nothing to install): the
 * driver to pass to `localPool`, or `DATABASE_CLIENT=bun`. On any other runtime it fails to
 * connect with `INVALID_CONFIG`. `pool.sql(fn)` hands `fn` a connected Bun `SQL` client.
 *
 * @example
 * import { driver } from "leasegate/bun";
 * import { localPool } from "leasegate/local";
 * const pool = await localPool(process.env, { driver });
 * const rows = await pool.sql((sql) => sql`SELECT now()`);
 */
import { type BunSqlClass, bunSqlDriver } from "../db/drivers/bun-sql.ts";

export const driver = bunSqlDriver((globalThis as { Bun?: { SQL?: BunSqlClass } }).Bun?.SQL);
