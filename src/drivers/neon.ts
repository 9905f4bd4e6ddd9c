/**
 * leasegate with the Neon serverless driver (`npm install @neondatabase/serverless`, 1.x): the
 * driver to pass to `workerPool` (or `localPool`). This entry imports `@neondatabase/serverless`
 * and nothing of the other drivers. `pool.sql(fn)` hands `fn` a connected Neon `PoolClient`.
 *
 * @example
 * import { driver } from "leasegate/neon";
 * import { workerPool } from "leasegate/workers";
 * const pool = workerPool(env, ctx, { driver });
 */
import * as neon from "@neondatabase/serverless";
import { neonDriver } from "../db/drivers/neon.ts";

export const driver = neonDriver(neon);
