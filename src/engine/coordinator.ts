/**
 * The one interface every coordinator backend implements: the Durable Object
 * (`ConnectionCoordinator`) and the Postgres backend (`PostgresCoordinator`) both declare
 * `implements CoordinatorBackend`; the lease clients take its lease calls (`Coordinator`), the
 * operator handler and the pool wiring its operator calls (`OperatorCoordinator`), the contract
 * suite all of it. A new call is added here first; the compiler then names every backend and
 * every caller that lacks it.
 */
import {
  type AcquireManyResult,
  type AcquireOptions,
  type AcquireResult,
  type ConnectionCounts,
  type ControlResult,
  type LearnResult,
  type LeaseRef,
  type OperatorStats,
  type PoolStats,
  type ReconcileResult,
  type ReleaseManyResult,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  type RoomReading,
  LeaseError,
  checkInt,
  expected,
} from "../core/index.ts";

/**
 * A pool's coordinator: the lease calls application code makes (through `Leases`) and the
 * operator calls (through the operator handler). A refused call answers a result object with a
 * stable code rather than throwing: a Durable Object's errors lose their class over RPC.
 *
 * @example
 * const coordinator: CoordinatorBackend = new PostgresCoordinator({ sql, config }); // or a Durable Object stub
 * const r = await coordinator.acquire({ holder: "req-1", waitMs: 2000 });
 * if (r.ok) await coordinator.release(leaseRef(r.lease));
 */
export interface CoordinatorBackend {
  // ── Lease calls ──

  /**
   * A lease now, `QUEUE_FULL`, or a wait in queue order until a slot frees (a lease) or the
   * deadline passes (`ACQUIRE_TIMEOUT`). `signal`: only when `abortable` is true; aborting it
   * answers `ACQUIRE_TIMEOUT` at once and withdraws the waiter.
   */
  acquire(options?: AcquireOptions, signal?: AbortSignal): Promise<AcquireResult>;
  /**
   * True when `acquire` takes an `AbortSignal` (the Postgres backend). Never true for a Durable
   * Object stub: an RPC call cannot carry a signal (and every stub property is a function).
   */
  readonly abortable?: boolean | undefined;
  /** Gives a slot back; an unknown id or a stale fence fails with its code and frees nothing. */
  release(ref: LeaseRef): Promise<ReleaseResult>;
  /** Extends a live lease to now + `ttlMs` (default: the pool's lease TTL). */
  renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult>;
  /**
   * Batches (the Durable Object has them, to save round trips): each request is granted if a slot
   * is free now, else answers `null` and is not queued. A backend without them gets single calls.
   */
  acquireMany?(requests: AcquireOptions[]): Promise<AcquireManyResult>;
  /** Several releases in order, each answered as `release` would. */
  releaseMany?(refs: LeaseRef[]): Promise<ReleaseManyResult>;
  /** The pool's live state (a shard of a shared pool: its share; the root: every shard's). */
  stats(): Promise<PoolStats>;

  // ── Operator calls (the operator handler's endpoints) ──

  /** `stats()` plus what only operators need: the limit override and the last reconciliation. */
  operatorStats(): Promise<OperatorStats>;
  /** Stops granting (drain): held leases run on, callers queue and time out. Kept until `resume()`. */
  pause(): Promise<ControlResult>;
  /** Grants again; queued callers get free slots at once, in order. */
  resume(): Promise<ControlResult>;
  /** A limit that outlives restarts; `null` returns to the configured one. Lowering revokes nothing. */
  setLimit(limit: number | null): Promise<ControlResult>;
  /** Frees a stuck lease by its id or an unambiguous prefix of at least 8 characters. */
  revoke(idOrPrefix: string): Promise<RevokeResult>;
  /**
   * Compares connection counts read from `pg_stat_activity` (by the caller, outside any lease:
   * `countConnections`) with the leases held now, and keeps the result for `operatorStats()`.
   * Counts that are not what `countConnections` answers fail with `INVALID_ARGUMENT`.
   */
  reconcile(counts: ConnectionCounts): Promise<ReconcileResult>;

  // ── The learned limit (`LEASE_LIMIT=auto`; a fixed limit answers `INVALID_ARGUMENT`) ──

  /**
   * True when the learned limit is older than the pool's own `LEASE_LEARN_INTERVAL_MS` (or there
   * is none) and nobody else is reading the room now: the caller has the claim, reads the room
   * outside any lease and hands the reading to `learnLimit`. Always false for a fixed limit.
   */
  learnDue(): Promise<boolean>;
  /**
   * What one reading of the database found (`readRoomCounts`), or why it could not be read. The
   * backend works out the limit with its own caps (`LEASE_HEADROOM`, `LEASE_LIMIT_MAX` from its
   * own settings, never the caller's), keeps it and applies it — a raise grants queued callers, a
   * drop revokes nothing — unless an operator's limit holds. A failed reading is kept for
   * operators (the limit stays) and answered as that failure.
   */
  learnLimit(reading: RoomReading): Promise<LearnResult>;
}

/**
 * The lease calls of a {@link CoordinatorBackend}: what a lease client (`Leases`, `ShardedLeases`)
 * sends, and all a stand-in coordinator in a test must answer.
 *
 * @example
 * const leases = new Leases(coordinator satisfies Coordinator);
 */
export type Coordinator = Pick<
  CoordinatorBackend,
  "acquire" | "abortable" | "release" | "renew" | "acquireMany" | "releaseMany" | "stats"
>;

/**
 * The operator calls: every call of {@link CoordinatorBackend} that is not a lease call, so a call
 * added to the interface is an operator call until said otherwise — and the operator handler's
 * `OperatorControls` and its endpoint table then fail to compile until it has an endpoint.
 *
 * @example
 * const controls = controlsOf(coordinator satisfies OperatorCoordinator, () => countConnections(sql, "my-app"));
 */
export type OperatorCoordinator = Omit<CoordinatorBackend, keyof Coordinator>;

/**
 * `counts` as `countConnections` answers them, or `INVALID_ARGUMENT` naming the bad field: both
 * backends check a reconciliation's input alike before they compare or keep anything.
 *
 * @example
 * const counts = checkCounts(await countConnections(sql, "my-app"));
 */
export function checkCounts(counts: ConnectionCounts): ConnectionCounts {
  if (typeof counts !== "object" || counts === null) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("counts", "an object { role, applicationName, roleConnections, appConnections }", counts),
    );
  }
  for (const name of ["role", "applicationName"] as const) {
    if (typeof counts[name] !== "string")
      throw new LeaseError("INVALID_ARGUMENT", expected(name, "a string", counts[name]));
  }
  checkInt("roleConnections", counts.roleConnections, 0, Number.MAX_SAFE_INTEGER);
  checkInt("appConnections", counts.appConnections, 0, Number.MAX_SAFE_INTEGER);
  if (counts.terminated !== undefined) checkInt("terminated", counts.terminated, 0, Number.MAX_SAFE_INTEGER);
  return counts;
}
