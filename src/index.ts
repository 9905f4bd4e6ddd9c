/**
 * leasegate: global admission control for Postgres connections.
 *
 * This entry is runtime-neutral (Workers, Node, Deno): the client, the error type, the shared
 * types and the pure core. The Durable Object and the Workers connection helpers are in
 * `leasegate/workers`; the Postgres-backed coordinator for Node and Deno in `leasegate/local`.
 *
 * @example
 * import { Leases, isLeaseError } from "leasegate";
 */
export { Leases } from "./client/leases.ts";
export type { Coordinator, LeaseClient, LeaseScope, LeasesOptions, WaitUntil, WithLeaseOptions } from "./client/leases.ts";
export { ShardedLeases, createIsolateShards, mergeStats, shardName, DEFAULT_BLOCK_IDLE_MS } from "./client/sharded-leases.ts";
export type { IsolateShards, IsolateShardsOptions, ShardedGrant, ShardedLeasesOptions } from "./client/sharded-leases.ts";
export { LeaseError, isLeaseError, isRetryableCode, ErrorCodes } from "./core/errors.ts";
export type { ErrorCode } from "./core/errors.ts";
export { configFromEnv, validateConfig, DEFAULT_CONFIG } from "./core/config.ts";
export type { PoolEnv } from "./core/config.ts";
export type { PoolConfig, PoolStats, HeldLease, Counters, Priority, AdaptiveConfig } from "./core/types.ts";
export type { AcquireManyResult, AcquireOptions, AcquireResult, Failure, LeaseGrant, ReleaseManyResult, ReleaseResult, RenewResult, Result } from "./core/protocol.ts";
export { MAX_BATCH } from "./core/protocol.ts";
export { shardLimits, pickShard, shardConfig } from "./core/shard.ts";
export type { ShardLoad, ShardRef } from "./core/shard.ts";
