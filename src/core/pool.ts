import { BOUNDS, type PoolConfig, checkInt, validateConfig } from "./config.ts";
import { LeaseError, expected } from "./errors.ts";
import { type Histogram, createHistogram, percentile, record } from "./histogram.ts";
import {
  type AdaptiveState,
  type Priority,
  PRIORITIES,
  capacity,
  eligible,
  isScheduled,
  observeHold,
  pickNext,
  served,
} from "./scheduling.ts";

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
  /** The class it was granted in, when not `normal`. */
  readonly priority?: Priority | undefined;
}

/** A request queued for a slot. It is granted under `leaseId` or times out at `deadline`. */
export interface Waiter {
  readonly leaseId: string;
  readonly holder: string;
  readonly enqueuedAt: number;
  readonly deadline: number;
  readonly ttlMs: number;
  readonly priority?: Priority | undefined;
  readonly tenant?: string | undefined;
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
  /** Waiters in the queue that use a class or tenant (0 = plain FIFO, served from the head). */
  scheduled: number;
  /** Per tenant, the turn it was last served in; `serveSeq` counts turns. */
  lastServed: Map<string, number>;
  serveSeq: number;
  /** The adaptive limit's state, when `config.adaptive` is set. */
  adaptive: AdaptiveState | undefined;
  /**
   * Operator drain: while set, no slot is granted (held leases keep running, waiters queue and
   * time out at their deadlines). Optional so that states built before it existed stay valid.
   */
  paused?: boolean;
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
  /** Only with `queue: false`: no slot may be taken now; nothing was recorded, the caller asks again on its own. */
  | { readonly status: "deferred" }
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
  /** Priority class; defaults to `normal`. */
  priority?: Priority | undefined;
  /** Fairness key: tenants take turns within a class. */
  tenant?: string | undefined;
  /**
   * `false`: decide only a grant now. A request that would wait or be shed is `deferred` instead,
   * leaving queue and counters as they were (a batch grants what it can and sends the rest on
   * their own, so they queue, time out and are counted exactly like single calls).
   */
  queue?: boolean | undefined;
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
    scheduled: 0,
    lastServed: new Map(),
    serveSeq: 0,
    adaptive: undefined,
    paused: false,
  };
  state.adaptive = initialAdaptive(state.config);
  if (restored) {
    for (const lease of restored.leases) {
      state.leases.set(lease.id, { ...lease });
      if (lease.fence >= state.nextFence) state.nextFence = lease.fence + 1;
    }
    if (restored.nextFence > state.nextFence) state.nextFence = restored.nextFence;
  }
  return state;
}

function initialAdaptive(config: PoolConfig): AdaptiveState | undefined {
  return config.adaptive ? { limit: config.limit, recentMs: 0, baselineMs: 0, samples: 0 } : undefined;
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
  return Math.min(30_000, Math.max(50, Math.ceil((meanHold * ahead) / capacity(state))));
}

function grantTo(
  state: PoolState,
  w: { leaseId: string; holder: string; ttlMs: number; priority?: Priority | undefined },
  now: number,
): Lease {
  const lease: Lease = {
    id: w.leaseId,
    fence: state.nextFence++,
    holder: w.holder,
    grantedAt: now,
    expiresAt: now + w.ttlMs,
  };
  if (w.priority !== undefined && w.priority !== "normal") (lease as { priority?: Priority }).priority = w.priority;
  state.leases.set(lease.id, lease);
  state.counters.granted++;
  return lease;
}

function removeAt(state: PoolState, i: number): Waiter {
  const [w] = state.queue.splice(i, 1);
  if (isScheduled(w!)) state.scheduled--;
  return w!;
}

/**
 * Free slots go to the queue: in plain FIFO pools to the head, in order, never skipping a waiter;
 * with classes and tenants, to the most urgent class that may take one, tenants taking turns.
 */
function fill(state: PoolState, now: number, fx: Effects): void {
  for (let i = pickNext(state); i >= 0; i = pickNext(state)) {
    const w = i === 0 && state.scheduled === 0 ? state.queue.shift()! : removeAt(state, i);
    served(state, w);
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
        if (isScheduled(w)) state.scheduled--;
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
 * const { outcome, effects } = acquire(pool, { leaseId: "3f…", holder: "req-1" }, now);
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
  const priority = req.priority ?? "normal";
  if (!(PRIORITIES as readonly string[]).includes(priority)) {
    throw new LeaseError("INVALID_ARGUMENT", expected("priority", `one of ${PRIORITIES.join(", ")}`, req.priority));
  }
  if (req.tenant !== undefined && (typeof req.tenant !== "string" || req.tenant.length > MAX_ID)) {
    throw new LeaseError("INVALID_ARGUMENT", expected("tenant", `a string of at most ${MAX_ID} characters`, req.tenant));
  }
  if (state.leases.has(leaseId) || state.queue.some((w) => w.leaseId === leaseId)) {
    throw new LeaseError("INVALID_ARGUMENT", `Lease id \`${leaseId.slice(0, 8)}…\` is already in use`);
  }

  const fx = noEffects();
  advance(state, now, fx);
  const { maxQueue } = state.config;
  const limit = capacity(state);
  const held = state.leases.size;

  // After `advance`, every waiter still queued is one that may not take a slot now; so a newcomer
  // that may take one passes no one who could have had it.
  if (eligible(state, priority)) {
    const waiter = { leaseId, holder: req.holder, ttlMs, priority, tenant: req.tenant };
    served(state, { ...waiter, enqueuedAt: now, deadline: now });
    record(state.waits, 0);
    return { outcome: { status: "granted", lease: grantTo(state, waiter, now) }, effects: fx };
  }
  if (req.queue === false) return { outcome: { status: "deferred" }, effects: fx };
  if (waitMs === 0) {
    state.counters.timedOut++;
    return {
      outcome: {
        status: "rejected",
        code: "ACQUIRE_TIMEOUT",
        message: `No connection slot free (limit ${limit}, ${held} held, ${state.queue.length} waiting${state.paused ? ", paused" : ""}) and the caller would not wait`,
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
  const waiter: Waiter = { leaseId, holder: req.holder, enqueuedAt: now, deadline, ttlMs };
  if (priority !== "normal") (waiter as { priority?: Priority }).priority = priority;
  if (req.tenant) (waiter as { tenant?: string }).tenant = req.tenant;
  if (isScheduled(waiter)) state.scheduled++;
  state.queue.push(waiter);
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
 * release(pool, { leaseId: lease.id, fence: lease.fence }, now)
 */
export function release(state: PoolState, ref: LeaseRef, now: number): { outcome: LeaseOutcome; effects: Effects } {
  checkTime(now);
  const found = findLive(state, ref, now);
  if (found.status === "ok") {
    state.leases.delete(found.lease.id);
    state.counters.released++;
    state.holdMsSum += now - found.lease.grantedAt;
    state.holdCount++;
    observeHold(state, found.lease, now - found.lease.grantedAt, now);
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
 * renew(pool, { leaseId: lease.id, fence: lease.fence }, now)
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
 * cancel(pool, leaseId, now)
 */
export function cancel(state: PoolState, leaseId: string, now: number): { removed: boolean; effects: Effects } {
  checkTime(now);
  const i = state.queue.findIndex((w) => w.leaseId === leaseId);
  if (i >= 0) {
    removeAt(state, i);
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
 * withdraw(pool, ["3f…", "9a…"], now)
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
 * const { expired, timedOut, granted } = tick(pool, now);
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
 * const at = nextWakeAt(pool); // the shell arms one timer for `at - now`
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
 * const fx = reconfigure(pool, { ...pool.config, limit: 5 }, now);
 */
export function reconfigure(state: PoolState, config: PoolConfig, now: number): Effects {
  checkTime(now);
  const wasAdaptive = state.config.adaptive !== undefined;
  state.config = validateConfig(config);
  if (!state.config.adaptive) state.adaptive = undefined;
  else if (!wasAdaptive || !state.adaptive) state.adaptive = initialAdaptive(state.config);
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
  /** The limit in force now: below `limit` while the adaptive limit has shrunk it. */
  effectiveLimit: number;
  reserved: number;
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
  /** True while an operator has paused granting (drain). */
  paused: boolean;
}

/**
 * A snapshot for operators; lease ids are cut to a prefix so stats never hand out a usable id.
 *
 * @example
 * const { held, waiting, counters } = stats(pool, now);
 */
export function stats(state: PoolState, now: number): PoolStats {
  const oldest = state.queue.reduce((min, w) => Math.min(min, w.enqueuedAt), Infinity);
  const w = state.waits;
  return {
    limit: state.config.limit,
    effectiveLimit: capacity(state),
    reserved: state.config.reserved ?? 0,
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
    paused: state.paused === true,
  };
}

/**
 * Pauses granting (drain, say for a migration) or resumes it. Pausing revokes nothing: holders
 * keep their leases, new callers queue and time out at their deadlines. Resuming grants free slots
 * to the queue at once, in order.
 *
 * @example
 * setPaused(pool, true, now); // … migrate … then:
 * const { granted } = setPaused(pool, false, now);
 */
export function setPaused(state: PoolState, paused: boolean, now: number): Effects {
  checkTime(now);
  if (typeof paused !== "boolean") throw new LeaseError("INVALID_ARGUMENT", expected("paused", "a boolean", paused));
  state.paused = paused;
  const fx = noEffects();
  advance(state, now, fx);
  return fx;
}

/** Shortest lease-id prefix an operator may name a lease by. */
export const MIN_ID_PREFIX = 8;

/**
 * The held lease whose id starts with `prefix` (operators see only the first 8 characters in
 * stats). Fails with `LEASE_NOT_FOUND` when none matches and `INVALID_ARGUMENT` when the prefix
 * is shorter than 8 characters or matches more than one lease: the operator must then give more.
 *
 * @example
 * const lease = findByPrefix(pool, "3f2a9c1b");
 */
export function findByPrefix(state: PoolState, prefix: string): Lease {
  if (typeof prefix !== "string" || prefix.length < MIN_ID_PREFIX || prefix.length > MAX_ID) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("id", `a lease id or its prefix of ${MIN_ID_PREFIX} to ${MAX_ID} characters`, prefix),
    );
  }
  const matches = [...state.leases.values()].filter((l) => l.id.startsWith(prefix));
  if (matches.length === 0) throw new LeaseError("LEASE_NOT_FOUND", `No held lease has an id starting with \`${prefix}\``);
  if (matches.length > 1) {
    throw new LeaseError("INVALID_ARGUMENT", `${matches.length} held leases have ids starting with \`${prefix}\`: give more characters`);
  }
  return matches[0]!;
}
