/**
 * leasegate: global admission control for Postgres connections.
 *
 * This entry is runtime-neutral (Workers, Node, Deno): the lease client, the database layer
 * (`Database`: queries and transactions under leases, retries, circuit breaker, safe mode), the
 * error type and the shared types. The Durable Object and `workerPool` are in `leasegate/workers`;
 * the Postgres-backed coordinator and `localPool` for Node and Deno in `leasegate/local`; the
 * operator handler and HTTP answers in `leasegate/http`; the drivers in `leasegate/postgres`,
 * `leasegate/pg` and `leasegate/neon`.
 *
 * @example
 * import { Leases, isLeaseError } from "leasegate";
 */
export { Leases } from "./client/leases.ts";
export type {
  Coordinator,
  LeaseClient,
  LeaseScope,
  LeasesOptions,
  WaitUntil,
  WithLeaseOptions,
  ClientAcquireOptions,
} from "./client/leases.ts";
export { ReleaseOutbox } from "./client/outbox.ts";
export { heartbeat } from "./client/heartbeat.ts";
export type { Heartbeat, HeartbeatOptions } from "./client/heartbeat.ts";
export { LeaseError, isLeaseError, isRetryableCode, ErrorCodes } from "./core/errors.ts";
export type { ErrorCode } from "./core/errors.ts";
export { configFromEnv, DEFAULT_CONFIG } from "./core/config.ts";
export type { PoolEnv } from "./core/config.ts";
export type {
  PoolConfig,
  PoolStats,
  HeldLease,
  Counters,
  Priority,
  AdaptiveConfig,
  LeaseRef,
} from "./core/types.ts";
export { leaseRef } from "./core/protocol.ts";
export type {
  AcquireManyResult,
  AcquireOptions,
  AcquireResult,
  ControlResult,
  Failure,
  LeaseGrant,
  ReleaseManyResult,
  ReleaseResult,
  RenewResult,
  Result,
  RevokeResult,
} from "./core/protocol.ts";
export type { OperatorStats, Reconciliation } from "./core/reconcile.ts";
export { Database } from "./db/database.ts";
export type { AttemptScope, CallOptions, DatabaseOptions, Transaction } from "./db/database.ts";
export { databaseConfig } from "./db/config.ts";
export type { DatabaseConfig, DatabaseEnv } from "./db/config.ts";
export { bindDriver } from "./db/driver.ts";
export type { ClientConnection, Connection, ConnectTarget, Driver, DriverModule, Row } from "./db/driver.ts";
export type { LeasedPool } from "./db/pool.ts";
export { leaseMetrics } from "./tracing.ts";
export type { LeaseMeter, LeaseTracer } from "./tracing.ts";
