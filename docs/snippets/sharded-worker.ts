import { driver } from "leasegate/postgres";
import { type WorkerPoolEnv, workerPool } from "leasegate/workers";

// wrangler.toml [vars]: LEASE_LIMIT = "40", LEASE_SHARDS = "4", LEASE_BLOCK = "4".
// The pool's limit is split across 4 coordinator objects (main#0 … main#3); each isolate keeps up
// to 4 idle leases for its own next requests. The code is the same as with one object.
export async function withShardedLease<T>(
  env: WorkerPoolEnv,
  ctx: ExecutionContext,
  work: (sql: import("postgres").Sql) => Promise<T>,
): Promise<T> {
  return workerPool(env, ctx, { driver }).sql(work);
}
