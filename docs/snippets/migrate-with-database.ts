import { driver } from "leasegate/postgres";
import { type WorkerPoolEnv, workerPool } from "leasegate/workers";
import type { Sql } from "postgres";

// Was: `withDatabase(fn)` over a module-level pool. Now one lease and one connection per call,
// at most LEASE_LIMIT connections across all isolates; retryable failures run `fn` again.
export const withDatabase = <T>(env: WorkerPoolEnv, ctx: ExecutionContext, fn: (sql: Sql) => Promise<T>) =>
  workerPool(env, ctx, { driver }).sql(fn);
