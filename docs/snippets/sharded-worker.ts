import { ShardedLeases, createIsolateShards, shardName, type ConnectionCoordinator } from "leasegate/workers";

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
}

// Module scope: the shards' last loads and the lease block live as long as the isolate.
const isolate = createIsolateShards({ shards: 4, limit: 40, maxBlock: 4, idleMs: 20 });

export async function withShardedLease<T>(env: Env, ctx: ExecutionContext, work: () => Promise<T>): Promise<T> {
  // Stubs belong to this request: each request brings its own.
  const coordinators = Array.from({ length: isolate.count }, (_, i) => env.COORDINATOR_DO.getByName(shardName("main", i, isolate.count)));
  const leases = new ShardedLeases({ coordinators, isolate, waitMs: 5000, waitUntil: (p) => ctx.waitUntil(p) });
  const lease = await leases.acquire();
  try {
    return await work();
  } finally {
    await leases.release(lease);
  }
}
