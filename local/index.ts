/**
 * leasegate for Node and Deno: the Postgres-backed coordinator (the same engine as the Durable
 * Object, state in Postgres tables), a pool wired from env, and the start-up check of settings and
 * database. Errors, types and the database layer are in `leasegate`; drivers in
 * `leasegate/postgres`, `leasegate/pg` and `leasegate/neon`.
 *
 * @example
 * import { localPool } from "leasegate/local";
 * import { driver } from "leasegate/postgres";
 * const pool = await localPool(process.env, { driver });
 */
export { PostgresCoordinator } from "./postgres-coordinator.ts";
export type { PostgresCoordinatorOptions } from "./postgres-coordinator.ts";
export { DEFAULT_DATABASE_URL, localPool } from "./pool.ts";
export type { LocalPool, LocalPoolEnv } from "./pool.ts";
export { preflight } from "./preflight.ts";
export type { PreflightFailure, PreflightOptions } from "./preflight.ts";
