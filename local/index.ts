/**
 * leasegate for Node and Deno: the Postgres-backed coordinator (the same engine as the Durable
 * Object, state in Postgres tables), a pool wired from env, and the start-up check of settings and
 * database. Everything in `leasegate` is here too.
 *
 * @example
 * import { localPool } from "leasegate/local";
 * const pool = await localPool(process.env);
 */
export { PostgresCoordinator } from "./postgres-coordinator.ts";
export type { PostgresCoordinatorOptions } from "./postgres-coordinator.ts";
export { DEFAULT_DATABASE_URL, localPool } from "./pool.ts";
export type { LocalPool, LocalPoolEnv } from "./pool.ts";
export { PREFLIGHT_CONNECT_TIMEOUT_MS, preflight } from "./preflight.ts";
export type { PreflightFailure, PreflightOptions } from "./preflight.ts";
export * from "../src/index.ts";
