import { BOUNDS, type PoolConfig, checkInt, validateConfig } from "./config.ts";
import { LeaseError, expected } from "./errors.ts";
import { type Histogram, createHistogram, percentile, record } from "./histogram.ts";

/** The right to hold one database connection until released or until `expiresAt`. */
export interface Lease {
  /** Unguessable id, chosen by the shell (the core has no randomness). */
  readonly id: string;
  /** Strictly increasing per pool: a release must name the fence it was granted with. */
  readonly fence: number;
  /** Who holds it (request id, process id): shown to operators. */
  readonly holder: string;
  readonly grantedAt: number;
  expiresAt: number;
}

/** A request queued for a slot. It is granted under `leaseId` or times out at `deadline`. */
export interface Waiter {
  readonly leaseId: string;
  readonly holder: string;
  readonly enqueuedAt: number;
  readonly deadline: number;
  readonly ttlMs: number;
}

export interface Counters {
  granted: number;
  released: number;
  expired: number;
  timedOut: number;
  rejected: number;
  cancelled: number;
}

/**
 * Everything a pool knows. Plain data: the shells persist the leases and `nextFence`; waiters live
 * only as long as the calls that wait.
 */
export interface PoolState {
  config: PoolConfig;
  nextFence: number;
  leases: Map<string, Lease>;
  /** FIFO: index 0 is granted first. */
  queue: Waiter[];
  counters: Counters;
  waits: Histogram;
  /** Sum and count of completed hold times, for the Retry-After estimate. */
  holdMsSum: number;
  holdCount: number;
}

/** What a transition did besides its own answer: the shell wakes, fails or forgets these. */
export interface Effects {
  /** Waiters that now hold a lease (lease.id is the waiter's leaseId). */
  granted: Lease[];
  /** Waiters whose deadline passed before a slot freed. */
  timedOut: Waiter[];
  /** Leases reaped because their holder neither released nor renewed them in time. */
  expired: Lease[];
}

export type AcquireOutcome =
  | { readonly status: "granted"; readonly lease: Lease }
  | { readonly status: "queued"; readonly deadline: number; readonly position: number }
  | {
      readonly status: "rejected";
      readonly code: "QUEUE_FULL" | "ACQUIRE_TIMEOUT";
      readonly message: string;
      readonly retryAfterMs: number;
    };

export type LeaseOutcome =
  | { readonly status: "ok"; readonly lease: Lease }
  | { readonly status: "failed"; readonly code: "LEASE_NOT_FOUND" | "STALE_FENCE" | "LEASE_EXPIRED"; readonly message: string };

export interface AcquireRequest {
  /** The id the lease will carry; also identifies the waiter while it is queued. */
  leaseId: string;
  holder: string;
  /** Queue deadline, relative to now; 0 means "only if a slot is free now". Defaults to config.waitMs. */
  waitMs?: number | undefined;
  /** Lease lifetime; defaults to config.leaseTtlMs. */
  ttlMs?: number | undefined;
}

export interface LeaseRef {
  leaseId: string;
  fence: number;
}

const noEffects = (): Effects => ({ granted: [], timedOut: [], expired: [] });

/**
 * A pool with no leases and no waiters.
 *
 * @example
 * const pool = createPool({ limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 30000 });
 */
export function createPool(config: PoolConfig, restored?: { leases: Iterable<Lease>; nextFence: number }): PoolState {
  const state: PoolState = {
    config: validateConfig(config),
    nextFence: 1,
    leases: new Map(),
    queue: [],
    counters: { granted: 0, released: 0, expired: 0, timedOut: 0, rejected: 0, cancelled: 0 },
    waits: createHistogram(),
    holdMsSum: 0,
    holdCount: 0,
  };
  if (restored) {
    for (const lease of restored.leases) {
      state.leases.set(lease.id, { ...lease });
      if (lease.fence >= state.nextFence) state.nextFence = lease.fence + 1;
    }
    if (restored.nextFence > state.nextFence) state.nextFence = restored.nextFence;
  }
  return state;
}

const MAX_ID = 128;
const MAX_HOLDER = 200;

function checkId(name: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_ID) {
    throw new LeaseError("INVALID_ARGUMENT", expected(name, `a non-empty string of at most ${MAX_ID} characters`, value));
  }
  return value;
}

function checkRef(ref: LeaseRef): void {
  if (typeof ref !== "object" || ref === null) {
    throw new LeaseError("INVALID_ARGUMENT", expected("lease", "an object with `leaseId` and `fence`", ref));
  }
  checkId("leaseId", ref.leaseId);
  checkInt("fence", ref.fence, 1, Number.MAX_SAFE_INTEGER);
}

/** Estimated time until a slot could be free for one more caller, from observed hold times. */
function retryAfterMs(state: PoolState): number {
  const meanHold = state.holdCount === 0 ? 100 : state.holdMsSum / state.holdCount;
  const ahead = state.queue.length + 1;
  return Math.min(30_000, Math.max(50, Math.ceil((meanHold * ahead) / state.config.limit)));
}

function grantTo(state: PoolState, w: { leaseId: string; holder: string; ttlMs: number }, now: number): Lease {
  const lease: Lease = {
    id: w.leaseId,
    fence: state.nextFence++,
    holder: w.holder,
    grantedAt: now,
    expiresAt: now + w.ttlMs,
  };
  state.leases.set(lease.id, lease);
  state.counters.granted++;
  return lease;
}

/** Free slots go to the head of the queue, in order; a waiter is never skipped. */
function fill(state: PoolState, now: number, fx: Effects): void {
  while (state.leases.size < state.config.limit && state.queue.length > 0) {
    const w = state.queue.shift()!;
    record(state.waits, now - w.enqueuedAt);
    fx.granted.push(grantTo(state, w, now));
  }
}

/**
 * Brings the pool to time `now`: leases past their expiry are reaped, waiters past their deadline
 * time out (a waiter is never granted after its deadline), then free slots go to the queue.
 */
function advance(state: PoolState, now: number, fx: Effects): void {
  for (const lease of state.leases.values()) {
    if (lease.expiresAt <= now) {
      state.leases.delete(lease.id);
      state.counters.expired++;
      fx.expired.push(lease);
    }
  }
  if (state.queue.length > 0) {
    let kept = 0;
    for (const w of state.queue) {
      if (w.deadline <= now) {
        state.counters.timedOut++;
        record(state.waits, now - w.enqueuedAt);
        fx.timedOut.push(w);
      } else {
        state.queue[kept++] = w;
      }
    }
    state.queue.length = kept;
  }
  fill(state, now, fx);
}

function checkTime(now: number): void {
  if (!Number.isFinite(now)) throw new LeaseError("INVALID_ARGUMENT", expected("now", "a finite number", now));
}

/**
 * Asks for a slot at time `now`: granted at once when one is free and nobody waits, queued with a
 * deadline otherwise, shed with `QUEUE_FULL` when the queue is at its cap.
 *
 * @example
 * const { outcome, effects } = acquire(pool, { leaseId: "3f…", holder: "req-1" }, Date.now());
 */
export function acquire(state: PoolState, req: AcquireRequest, now: number): { outcome: AcquireOutcome; effects: Effects } {
  checkTime(now);
  if (typeof req !== "object" || req === null) {
    throw new LeaseError("INVALID_ARGUMENT", expected("request", "an object", req));
  }
  const leaseId = checkId("leaseId", req.leaseId);
  if (typeof req.holder !== "string" || req.holder.length > MAX_HOLDER) {
    throw new LeaseError("INVALID_ARGUMENT", expected("holder", `a string of at most ${MAX_HOLDER} characters`, req.holder));
  }
  const waitMs = req.waitMs === undefined ? state.config.waitMs : checkInt("waitMs", req.waitMs, 0, BOUNDS.waitMs);
  const ttlMs = req.ttlMs === undefined ? state.config.leaseTtlMs : checkInt("ttlMs", req.ttlMs, 1, BOUNDS.leaseTtlMs);
  if (state.leases.has(leaseId) || state.queue.some((w) => w.leaseId === leaseId)) {
    throw new LeaseError("INVALID_ARGUMENT", `Lease id \`${leaseId.slice(0, 8)}…\` is already in use`);
  }

  const fx = noEffects();
  advance(state, now, fx);
  const { limit, maxQueue } = state.config;
  const held = state.leases.size;

  if (held < limit && state.queue.length === 0) {
    record(state.waits, 0);
    return { outcome: { status: "granted", lease: grantTo(state, { leaseId, holder: req.holder, ttlMs }, now) }, effects: fx };
  }
  if (waitMs === 0) {
    state.counters.timedOut++;
    return {
      outcome: {
        status: "rejected",
        code: "ACQUIRE_TIMEOUT",
        message: `No connection slot free (limit ${limit}, ${held} held, ${state.queue.length} waiting) and the caller would not wait`,
        retryAfterMs: retryAfterMs(state),
      },
      effects: fx,
    };
  }
  if (state.queue.length >= maxQueue) {
    state.counters.rejected++;
    return {
      outcome: {
        status: "rejected",
        code: "QUEUE_FULL",
        message: `Wait queue is full (limit ${limit}, ${held} held, ${state.queue.length} waiting, max queue ${maxQueue})`,
        retryAfterMs: retryAfterMs(state),
      },
      effects: fx,
    };
  }
  const deadline = now + waitMs;
  state.queue.push({ leaseId, holder: req.holder, enqueuedAt: now, deadline, ttlMs });
  return { outcome: { status: "queued", deadline, position: state.queue.length }, effects: fx };
}

/** The message a waiter gets when its deadline passes: capacity and queue depth at that moment. */
export function timeoutMessage(state: PoolState, w: Waiter): string {
  return (
    `Timed out after ${w.deadline - w.enqueuedAt} ms waiting for a connection slot ` +
    `(limit ${state.config.limit}, ${state.leases.size} held, ${state.queue.length} waiting)`
  );
}

/** Retry hint for a waiter that timed out. */
export function retryAfterHint(state: PoolState): number {
  return retryAfterMs(state);
}

function findLive(state: PoolState, ref: LeaseRef, now: number): LeaseOutcome {
  checkRef(ref);
  const lease = state.leases.get(ref.leaseId);
  if (!lease) return { status: "failed", code: "LEASE_NOT_FOUND", message: "No such lease: it was never granted, or is already released or reaped" };
  if (lease.fence !== ref.fence) {
    return { status: "failed", code: "STALE_FENCE", message: `Fence ${ref.fence} does not match the lease's fence` };
  }
  if (lease.expiresAt <= now) {
    return { status: "failed", code: "LEASE_EXPIRED", message: `Lease expired ${now - lease.expiresAt} ms ago` };
  }
  return { status: "ok", lease };
}

/**
 * Gives a slot back. A release that names an unknown lease or a stale fence changes nothing, so
 * a late or repeated release can never free a slot twice or free someone else's.
 *
 * @example
 * release(pool, { leaseId: lease.id, fence: lease.fence }, Date.now())
 */
export function release(state: PoolState, ref: LeaseRef, now: number): { outcome: LeaseOutcome; effects: Effects } {
  checkTime(now);
  const found = findLive(state, ref, now);
  if (found.status === "ok") {
    state.leases.delete(found.lease.id);
    state.counters.released++;
    state.holdMsSum += now - found.lease.grantedAt;
    state.holdCount++;
  }
  const fx = noEffects();
  advance(state, now, fx);
  return { outcome: found, effects: fx };
}

/**
 * Extends a live lease to `now + ttlMs` (default: the pool's TTL). An expired lease cannot be
 * renewed: its slot may already belong to someone else.
 *
 * @example
 * renew(pool, { leaseId: lease.id, fence: lease.fence }, Date.now())
 */
export function renew(
  state: PoolState,
  ref: LeaseRef,
  now: number,
  ttlMs?: number,
): { outcome: LeaseOutcome; effects: Effects } {
  checkTime(now);
  const ttl = ttlMs === undefined ? state.config.leaseTtlMs : checkInt("ttlMs", ttlMs, 1, BOUNDS.leaseTtlMs);
  const found = findLive(state, ref, now);
  if (found.status === "ok") found.lease.expiresAt = now + ttl;
  const fx = noEffects();
  advance(state, now, fx);
  return { outcome: found, effects: fx };
}

/**
 * Removes a waiter whose caller gave up (disconnected, aborted). Returns whether it was queued.
 *
 * @example
 * cancel(pool, leaseId, Date.now())
 */
export function cancel(state: PoolState, leaseId: string, now: number): { removed: boolean; effects: Effects } {
  checkTime(now);
  const i = state.queue.findIndex((w) => w.leaseId === leaseId);
  if (i >= 0) {
    state.queue.splice(i, 1);
    state.counters.cancelled++;
  }
  const fx = noEffects();
  advance(state, now, fx);
  return { removed: i >= 0, effects: fx };
}

/**
 * Removes several waiters at once (their callers are known to be gone), then brings the pool to
 * `now`. Unlike repeated `cancel`s, no slot can go to one of them in between. Returns how many were
 * queued.
 *
 * @example
 * withdraw(pool, ["3f…", "9a…"], Date.now())
 */
export function withdraw(state: PoolState, leaseIds: readonly string[], now: number): { removed: number; effects: Effects } {
  checkTime(now);
  const gone = new Set(leaseIds);
  const before = state.queue.length;
  state.queue = state.queue.filter((w) => !gone.has(w.leaseId));
  const removed = before - state.queue.length;
  state.counters.cancelled += removed;
  const fx = noEffects();
  advance(state, now, fx);
  return { removed, effects: fx };
}

/**
 * Brings the pool to `now` with no request: the shell calls it when a timer or alarm fires.
 *
 * @example
 * const { expired, timedOut, granted } = tick(pool, Date.now());
 */
export function tick(state: PoolState, now: number): Effects {
  checkTime(now);
  const fx = noEffects();
  advance(state, now, fx);
  return fx;
}

/**
 * When the pool next needs a `tick`: the earliest lease expiry or waiter deadline, or null.
 *
 * @example
 * const at = nextWakeAt(pool); if (at !== null) setTimeout(onTick, at - Date.now());
 */
export function nextWakeAt(state: PoolState): number | null {
  let at = Infinity;
  for (const lease of state.leases.values()) if (lease.expiresAt < at) at = lease.expiresAt;
  for (const w of state.queue) if (w.deadline < at) at = w.deadline;
  return at === Infinity ? null : at;
}

/** The earliest lease expiry alone (what a durable alarm must cover), or null. */
export function nextExpiryAt(state: PoolState): number | null {
  let at = Infinity;
  for (const lease of state.leases.values()) if (lease.expiresAt < at) at = lease.expiresAt;
  return at === Infinity ? null : at;
}

/**
 * Changes the configuration of a live pool. Lowering the limit revokes nothing: holders above the
 * new limit keep their leases, and no one is granted until held falls below it.
 *
 * @example
 * const fx = reconfigure(pool, { ...pool.config, limit: 5 }, Date.now());
 */
export function reconfigure(state: PoolState, config: PoolConfig, now: number): Effects {
  checkTime(now);
  state.config = validateConfig(config);
  const fx = noEffects();
  advance(state, now, fx);
  return fx;
}

export interface HeldLease {
  idPrefix: string;
  holder: string;
  fence: number;
  ageMs: number;
  expiresInMs: number;
}

export interface PoolStats {
  limit: number;
  held: number;
  waiting: number;
  /** Age of the oldest waiter, ms (0 when nobody waits). */
  maxWaitMs: number;
  maxQueue: number;
  waitMs: number;
  leaseTtlMs: number;
  counters: Counters;
  waitTimeMs: { p50: number; p90: number; p99: number; max: number; count: number; sum: number };
  waitHistogram: { bounds: readonly number[]; counts: number[] };
  leases: HeldLease[];
}

/**
 * A snapshot for operators; lease ids are cut to a prefix so stats never hand out a usable id.
 *
 * @example
 * const { held, waiting, counters } = stats(pool, Date.now());
 */
export function stats(state: PoolState, now: number): PoolStats {
  const oldest = state.queue.reduce((min, w) => Math.min(min, w.enqueuedAt), Infinity);
  const w = state.waits;
  return {
    limit: state.config.limit,
    held: state.leases.size,
    waiting: state.queue.length,
    maxWaitMs: oldest === Infinity ? 0 : now - oldest,
    maxQueue: state.config.maxQueue,
    waitMs: state.config.waitMs,
    leaseTtlMs: state.config.leaseTtlMs,
    counters: { ...state.counters },
    waitTimeMs: {
      p50: percentile(w, 0.5),
      p90: percentile(w, 0.9),
      p99: percentile(w, 0.99),
      max: w.max,
      count: w.count,
      sum: w.sum,
    },
    waitHistogram: { bounds: w.bounds, counts: [...w.counts] },
    leases: [...state.leases.values()].map((l) => ({
      idPrefix: l.id.slice(0, 8),
      holder: l.holder,
      fence: l.fence,
      ageMs: now - l.grantedAt,
      expiresInMs: l.expiresAt - now,
    })),
  };
}
