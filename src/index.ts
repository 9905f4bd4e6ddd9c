/**
 * leasegate: global admission control for Postgres connections.
 *
 * This entry is runtime-neutral (Workers, Node, Deno): the lease clients, the database layer
 * (`Database`: queries and transactions under leases, retries, circuit breaker, safe mode), the
 * error type and the shared types. The Durable Object and `workerPool` are in `leasegate/workers`;
 * the Postgres-backed coordinator and `localPool` for Node and Deno in `leasegate/local`; the
 * operator handler and HTTP answers in `leasegate/http`.
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
export type {
  AcquireManyResult,
  AcquireOptions,
  AcquireResult,
  Failure,
  LeaseGrant,
  ReleaseManyResult,
  ReleaseResult,
  RenewResult,
  Result,
} from "./core/protocol.ts";
export { MAX_BATCH } from "./core/protocol.ts";
export { shardLimits, pickShard, shardConfig } from "./core/shard.ts";
export type { ShardLoad, ShardRef } from "./core/shard.ts";
export { checkInt, intFromEnv } from "./core/config.ts";
export { expected } from "./core/errors.ts";
export type { OperatorStats, Reconciliation } from "./core/reconcile.ts";
export type { ControlResult, RevokeResult } from "./core/protocol.ts";
export { Database } from "./db/database.ts";
export type { AttemptScope, CallOptions, DatabaseOptions, Transaction } from "./db/database.ts";
export { databaseConfig } from "./db/config.ts";
export type { DatabaseConfig, DatabaseEnv } from "./db/config.ts";
export { openDriver } from "./db/connect.ts";
export type { Connection, Driver, Row } from "./db/connect.ts";
export type { LeasedPool } from "./db/pool.ts";
export { heartbeat } from "./client/heartbeat.ts";
export type { Heartbeat, HeartbeatOptions } from "./client/heartbeat.ts";
export type { ClientAcquireOptions } from "./client/leases.ts";
