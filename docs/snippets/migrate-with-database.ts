import { leasedQuery, type ConnectionCoordinator } from "leasegate/workers";
import type { Sql } from "postgres";

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

// Was: `withDatabase(fn)` over a module-level pool. Now one lease and one connection per call,
// at most LEASE_LIMIT connections across all isolates.
export const withDatabase = <T>(env: Env, ctx: ExecutionContext, fn: (sql: Sql) => Promise<T>) =>
  leasedQuery(fn, { coordinator: env.COORDINATOR_DO, hyperdrive: env.HYPERDRIVE, ctx });
