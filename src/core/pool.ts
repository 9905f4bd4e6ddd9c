import { BOUNDS, checkInt, validateConfig } from "./config.ts";
import { LeaseError, expected } from "./errors.ts";
import { createHistogram, percentile, record } from "./histogram.ts";
import { CLOCK_MARGIN_MS, TTL_CAP_FACTOR, type VerifyRef, maxTtlMs } from "./recovery.ts";
import {
  SHED_MARGIN,
  adaptiveFollowsLimit,
  capacity,
  eligible,
  hopeless,
  hopelessUnderLifo,
  noPrediction,
  noStandingQueue,
  observeHold,
  observeHoldTime,
  observeQueue,
  observeWait,
  pickNext,
  predictWaitMs,
  reservedSlots,
  served,
  sheddingOn,
} from "./scheduling.ts";
import {
  type AcquireOutcome,
  type AcquireRequest,
  type AdaptiveState,
  type Effects,
  type Lease,
  type LeaseOutcome,
  type LeaseRef,
  type PoolConfig,
  type PoolState,
  type PoolStats,
  type Priority,
  type Waiter,
  PRIORITIES,
} from "./types.ts";

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
    standing: noStandingQueue(),
    counters: { granted: 0, released: 0, expired: 0, timedOut: 0, rejected: 0, cancelled: 0 },
    waits: createHistogram(),
    holdMsSum: 0,
    holdCount: 0,
    prediction: noPrediction(),
    lastServed: new Map(),
    serveSeq: 0,
    adaptive: undefined,
    paused: false,
    limitOverride: null,
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
/** Longest token a reference may carry (the Durable Object's are 22 characters). */
const MAX_TOKEN = 64;

function checkId(name: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_ID) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected(name, `a non-empty string of at most ${MAX_ID} characters`, value),
    );
  }
  return value;
}

/**
 * A lease reference as received over RPC, or `INVALID_ARGUMENT`.
 *
 * @example
 * checkRef({ leaseId: lease.id, fence: lease.fence });
 */
export function checkRef(ref: LeaseRef): void {
  if (typeof ref !== "object" || ref === null) {
    throw new LeaseError("INVALID_ARGUMENT", expected("lease", "an object with `leaseId` and `fence`", ref));
  }
  checkId("leaseId", ref.leaseId);
  checkInt("fence", ref.fence, 1, Number.MAX_SAFE_INTEGER);
  if (ref.expiresAt !== undefined && !Number.isFinite(ref.expiresAt)) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("expiresAt", "a finite number (ms since the epoch)", ref.expiresAt),
    );
  }
  if (ref.token !== undefined && (typeof ref.token !== "string" || ref.token.length > MAX_TOKEN)) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("token", `a string of at most ${MAX_TOKEN} characters (the lease's token)`, ref.token),
    );
  }
}

/**
 * A per-call lease lifetime (acquire or renew), or `INVALID_ARGUMENT`: from 1 ms to
 * `TTL_CAP_FACTOR` times the pool's TTL, which bounds how long a restart can pause granting.
 */
function checkTtl(state: PoolState, ttlMs: unknown): number {
  const max = maxTtlMs(state.config);
  if (typeof ttlMs !== "number" || !Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > max) {
    const what = `an integer from 1 to ${max} (at most ${TTL_CAP_FACTOR} × the pool's leaseTtlMs of ${state.config.leaseTtlMs} ms)`;
    throw new LeaseError("INVALID_ARGUMENT", expected("ttlMs", what, ttlMs));
  }
  return ttlMs;
}

/** Estimated time until a slot could be free for one more caller, from observed hold times. */
function retryAfterMs(state: PoolState): number {
  const meanHold = state.holdCount === 0 ? 100 : state.holdMsSum / state.holdCount;
  const ahead = state.queue.length + 1;
  return retryHint((meanHold * ahead) / Math.max(1, capacity(state)));
}

/** A Retry-After hint, ms: at least 50, at most 30 s. */
function retryHint(ms: number): number {
  return Math.min(30_000, Math.max(50, Math.ceil(ms)));
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

/**
 * Free slots go to the queue: in plain pools to the head, in order, never skipping a waiter (or,
 * under a standing queue with `queue: "adaptive"`, to the tail: the newest first); with classes
 * and tenants, to the most urgent class that may take one, tenants taking turns. The mode is
 * decided once per transition, before the slots are handed out, and looked at again after.
 */
function fill(state: PoolState, now: number, fx: Effects): void {
  observeQueue(state, now);
  // A pool recovering the leases granted before its restart cannot know a slot is free.
  if (state.recovery) return;
  // Under newest-first, the oldest whose turn cannot come in time are told now (see
  // `hopelessUnderLifo`), before the slots go to the newest: the mode just decided stands for both.
  for (const w of hopelessUnderLifo(state, now)) {
    state.counters.timedOut++;
    state.prediction.shed++;
    record(state.waits, now - w.enqueuedAt);
    // Its answer says how long it really waited.
    fx.timedOut.push({ ...w, deadline: now });
  }
  for (let i = pickNext(state); i >= 0; i = pickNext(state)) {
    const w = i === 0 ? state.queue.shift()! : state.queue.splice(i, 1)[0]!;
    served(state, w);
    record(state.waits, now - w.enqueuedAt);
    observeWait(state, w, now);
    // A waiter's caller may have gone while it waited: its grant lives `claimMs` until claimed.
    fx.granted.push(grantTo(state, w.claimMs === undefined ? w : { ...w, ttlMs: w.claimMs }, now));
  }
  // The queue drained below the target (or emptied): back to FIFO for the next transition.
  observeQueue(state, now);
}

/**
 * Brings the pool to time `now`: leases past their expiry are reaped, waiters past their deadline
 * time out (a waiter is never granted after its deadline), then free slots go to the queue.
 */
function advance(state: PoolState, now: number, fx: Effects): void {
  // Every lease granted before the restart has been renewed (and is known again) or has expired
  // by any clock within the margin of the one that answered it; its tombstones go with the window.
  if (state.recovery && now >= state.recovery.until) state.recovery = undefined;
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
 * const { outcome, effects } = acquire(pool, { leaseId: "3f…", holder: "req-1" }, now);
 */
export function acquire(
  state: PoolState,
  req: AcquireRequest,
  now: number,
): { outcome: AcquireOutcome; effects: Effects } {
  checkTime(now);
  const r = checkRequest(state, req);
  const fx = noEffects();
  advance(state, now, fx);
  // After `advance`, every waiter still queued is one that may not take a slot now; so a newcomer
  // that may take one passes no one who could have had it.
  if (!state.recovery && eligible(state, r.priority)) {
    served(state, { ...r, enqueuedAt: now, deadline: now });
    record(state.waits, 0);
    return { outcome: { status: "granted", lease: grantTo(state, r, now) }, effects: fx };
  }
  if (req.queue === false) return { outcome: { status: "deferred" }, effects: fx };
  const shed = refusal(state, r.waitMs);
  if (shed) return { outcome: shed, effects: fx };
  // A wait that cannot end in time is told so now, not at its deadline (see `hopeless`).
  const forecast = predictWaitMs(state, r.priority, r.tenant, now);
  if (hopeless(state, forecast, r.waitMs)) return { outcome: hopelessWait(state, forecast!.ms, r.waitMs), effects: fx };
  const deadline = now + r.waitMs;
  const waiter: Waiter = { leaseId: r.leaseId, holder: r.holder, enqueuedAt: now, deadline, ttlMs: r.ttlMs };
  // Measured only where a shed could happen: behind at least one waiter certain to go first.
  if (forecast && forecast.ahead >= 1) (waiter as { predictedMs?: number }).predictedMs = forecast.ms;
  if (r.claimMs !== undefined) (waiter as { claimMs?: number }).claimMs = r.claimMs;
  if (r.priority !== "normal") (waiter as { priority?: Priority }).priority = r.priority;
  if (r.tenant) (waiter as { tenant?: string }).tenant = r.tenant;
  state.queue.push(waiter);
  return { outcome: { status: "queued", deadline, position: state.queue.length }, effects: fx };
}

/** A request with its defaults applied, or `INVALID_ARGUMENT` naming the first bad field. */
function checkRequest(state: PoolState, req: AcquireRequest) {
  if (typeof req !== "object" || req === null) {
    throw new LeaseError("INVALID_ARGUMENT", expected("request", "an object", req));
  }
  const leaseId = checkId("leaseId", req.leaseId);
  if (typeof req.holder !== "string" || req.holder.length > MAX_HOLDER) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("holder", `a string of at most ${MAX_HOLDER} characters`, req.holder),
    );
  }
  const waitMs = req.waitMs === undefined ? state.config.waitMs : checkInt("waitMs", req.waitMs, 0, BOUNDS.waitMs);
  const ttlMs = req.ttlMs === undefined ? state.config.leaseTtlMs : checkTtl(state, req.ttlMs);
  const claimMs =
    req.claimMs === undefined ? undefined : Math.min(ttlMs, checkInt("claimMs", req.claimMs, 1, BOUNDS.leaseTtlMs));
  const priority = req.priority ?? "normal";
  if (!(PRIORITIES as readonly string[]).includes(priority)) {
    throw new LeaseError("INVALID_ARGUMENT", expected("priority", `one of ${PRIORITIES.join(", ")}`, req.priority));
  }
  if (req.tenant !== undefined && (typeof req.tenant !== "string" || req.tenant.length > MAX_ID)) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("tenant", `a string of at most ${MAX_ID} characters`, req.tenant),
    );
  }
  if (state.leases.has(leaseId) || state.queue.some((w) => w.leaseId === leaseId)) {
    throw new LeaseError("INVALID_ARGUMENT", `Lease id \`${leaseId.slice(0, 8)}…\` is already in use`);
  }
  return { leaseId, holder: req.holder, waitMs, ttlMs, claimMs, priority, tenant: req.tenant };
}

/**
 * Why a request that may not take a slot now is not queued either (counted as such), or null:
 * it would not wait, or the queue is at its cap.
 */
function refusal(state: PoolState, waitMs: number): Extract<AcquireOutcome, { status: "rejected" }> | null {
  const { maxQueue } = state.config;
  const where = `limit ${capacity(state)}, ${state.leases.size} held, ${state.queue.length} waiting`;
  if (waitMs === 0) {
    state.counters.timedOut++;
    const why = state.recovery ? ", in the recovery window after a restart" : state.paused ? ", paused" : "";
    const message = `No connection slot free (${where}${why}) and the caller would not wait`;
    return { status: "rejected", code: "ACQUIRE_TIMEOUT", message, retryAfterMs: retryAfterMs(state) };
  }
  if (state.queue.length >= maxQueue) {
    state.counters.rejected++;
    const message = `Wait queue is full (${where}, max queue ${maxQueue})`;
    return { status: "rejected", code: "QUEUE_FULL", message, retryAfterMs: retryAfterMs(state) };
  }
  return null;
}

/**
 * The answer to a caller whose predicted wait is hopeless: `ACQUIRE_TIMEOUT` now, as it would have
 * been at its deadline, counted as a time-out (and as a shed); Retry-After is the predicted wait.
 */
function hopelessWait(
  state: PoolState,
  predictedMs: number,
  waitMs: number,
): Extract<AcquireOutcome, { status: "rejected" }> {
  state.counters.timedOut++;
  state.prediction.shed++;
  const where = `limit ${capacity(state)}, ${state.leases.size} held, ${state.queue.length} waiting`;
  const message =
    `No connection slot within the ${waitMs} ms deadline: the predicted wait is ${predictedMs} ms (${where}), ` +
    `at least ${SHED_MARGIN} × the deadline, so the caller is answered now rather than at its deadline`;
  return { status: "rejected", code: "ACQUIRE_TIMEOUT", message, retryAfterMs: retryHint(predictedMs) };
}

/** What a waiter that timed out is told; a backend that wakes it in another process sends these. */
export interface TimeoutFacts {
  waitedMs: number;
  limit: number;
  held: number;
  waiting: number;
  retryAfterMs: number;
}

/**
 * The facts of a waiter's timeout at the moment its deadline passed (after the transition that
 * timed it out): capacity, leases held, queue depth and the retry hint.
 *
 * @example
 * const facts = timeoutFacts(pool, waiter); formatTimeout(facts)
 */
export function timeoutFacts(state: PoolState, w: Waiter): TimeoutFacts {
  return {
    waitedMs: w.deadline - w.enqueuedAt,
    limit: state.config.limit,
    held: state.leases.size,
    waiting: state.queue.length,
    retryAfterMs: retryAfterMs(state),
  };
}

/**
 * The message of an `ACQUIRE_TIMEOUT`: how long it waited, capacity and queue depth.
 *
 * @example
 * formatTimeout({ waitedMs: 150, limit: 3, held: 3, waiting: 0, retryAfterMs: 50 })
 * // "Timed out after 150 ms waiting for a connection slot (limit 3, 3 held, 0 waiting)"
 */
export function formatTimeout(f: TimeoutFacts): string {
  return `Timed out after ${f.waitedMs} ms waiting for a connection slot (limit ${f.limit}, ${f.held} held, ${f.waiting} waiting)`;
}

/** True when `ref` may name a lease granted before the restart the pool is recovering from. */
function earlier(state: PoolState, ref: LeaseRef, now: number): boolean {
  const r = state.recovery;
  return r !== undefined && now < r.until && ref.fence < r.recoverBelowFence;
}

/**
 * Whether a renewal of an unknown earlier lease re-registers it. Only a lease the pool can verify
 * as its own, for no longer than it was granted, and never past the limit:
 * - not released or revoked in this window (a late heartbeat sent before the release);
 * - its token verifies for (id, fence, `expiresAt`): no invented id, no tokenless renewal (a
 *   client of an earlier version: it is told `LEASE_NOT_FOUND` and stops), no forged expiry;
 * - `expiresAt` is within the stored horizon (nothing answered before the restart lies past it);
 * - `expiresAt` is still ahead by more than the clock margin: this machine's clock may read behind
 *   the one that answered it, and a lease that lapsed there must not come back here;
 * - the leases re-registered stay within the limit (those alive at the restart were no more).
 */
function recoverable(state: PoolState, ref: LeaseRef, now: number, verify: VerifyRef | undefined): boolean {
  const r = state.recovery!;
  return (
    !r.tombstones.has(ref.leaseId) &&
    ref.expiresAt !== undefined &&
    ref.expiresAt <= r.horizon &&
    ref.expiresAt - CLOCK_MARGIN_MS > now &&
    state.leases.size < state.config.limit &&
    ref.token !== undefined &&
    verify?.(ref) === true
  );
}

/** Remembers an earlier lease given back (or revoked) in the window, so no late heartbeat brings it back. */
function bury(state: PoolState, ref: LeaseRef, now: number): void {
  if (earlier(state, ref, now)) state.recovery!.tombstones.add(ref.leaseId);
}

const NOT_FOUND = "No such lease: it was never granted, or is already released or reaped";
const REVOKED = "An operator revoked this lease: stop the work that uses its connection, then release it";

function findLive(state: PoolState, ref: LeaseRef, now: number): LeaseOutcome {
  checkRef(ref);
  const lease = state.leases.get(ref.leaseId);
  if (!lease) return { status: "failed", code: "LEASE_NOT_FOUND", message: NOT_FOUND };
  if (lease.fence !== ref.fence) {
    return { status: "failed", code: "STALE_FENCE", message: `Fence ${ref.fence} does not match the lease's fence` };
  }
  if (lease.expiresAt <= now) {
    return { status: "failed", code: "LEASE_EXPIRED", message: `Lease expired ${now - lease.expiresAt} ms ago` };
  }
  return { status: "ok", lease };
}

/**
 * Gives a slot back (also a revoked lease's: its holder has stopped). A release that names an
 * unknown lease or a stale fence changes nothing, so a late or repeated release can never free a
 * slot twice or free someone else's. In a recovery window, a release of an earlier lease (known
 * again or not) leaves a tombstone — for an unknown one only when its token verifies, so garbage
 * cannot fill memory — and a late heartbeat of it is not recovered.
 *
 * @example
 * release(pool, leaseRef(lease), now)
 */
export function release(
  state: PoolState,
  ref: LeaseRef,
  now: number,
  verify?: VerifyRef,
): { outcome: LeaseOutcome; effects: Effects } {
  checkTime(now);
  let found = findLive(state, ref, now);
  if (found.status === "failed" && found.code === "LEASE_NOT_FOUND" && earlier(state, ref, now)) {
    // A lease granted before the restart, given back before its holder renewed it: nothing to free.
    if (ref.token !== undefined && ref.expiresAt !== undefined && verify?.(ref)) bury(state, ref, now);
    found = { status: "ok", lease: recovered(ref, now) };
    state.counters.released++;
  } else if (found.status === "ok") {
    state.leases.delete(found.lease.id);
    state.counters.released++;
    bury(state, ref, now);
    // A recovered lease's hold began before the restart, at an unknown time.
    if (!found.lease.recovered) {
      state.holdMsSum += now - found.lease.grantedAt;
      state.holdCount++;
      observeHoldTime(state, now - found.lease.grantedAt);
      observeHold(state, found.lease, now - found.lease.grantedAt, now);
    }
  }
  const fx = noEffects();
  advance(state, now, fx);
  return { outcome: found, effects: fx };
}

/**
 * Extends a live lease to `now + ttlMs` (default: the pool's TTL; at most `TTL_CAP_FACTOR` times
 * it); a renewal never shortens a lease. An expired lease cannot be renewed: its slot may already belong to someone else; nor can a
 * revoked one (`LEASE_LOST`). In a recovery window, a renewal of an unknown earlier lease that
 * `verify` vouches for re-registers it with the expiry its holder was told — its original one —
 * and its next renewal is an ordinary one.
 *
 * @example
 * renew(pool, leaseRef(lease), now)
 */
export function renew(
  state: PoolState,
  ref: LeaseRef,
  now: number,
  ttlMs?: number,
  verify?: VerifyRef,
): { outcome: LeaseOutcome; effects: Effects } {
  checkTime(now);
  const ttl = ttlMs === undefined ? state.config.leaseTtlMs : checkTtl(state, ttlMs);
  let found = findLive(state, ref, now);
  if (
    found.status === "failed" &&
    found.code === "LEASE_NOT_FOUND" &&
    earlier(state, ref, now) &&
    recoverable(state, ref, now, verify)
  ) {
    // Its holder still works under a lease granted before the restart: it keeps its slot.
    found = { status: "ok", lease: recovered(ref, now) };
    state.leases.set(found.lease.id, found.lease);
    state.recovery!.recovered++;
  } else if (found.status === "ok") {
    if (found.lease.revoked) found = { status: "failed", code: "LEASE_LOST", message: REVOKED };
    // Never shortened: every token handed out for this lease names an expiry at or before its
    // current one, so an old copy of it can never outlive the lease in a recovery window.
    else found.lease.expiresAt = Math.max(found.lease.expiresAt, now + ttl);
  }
  const fx = noEffects();
  advance(state, now, fx);
  return { outcome: found, effects: fx };
}

/** A lease granted before a restart, as its holder's renewal or release names it: until the expiry it was told. */
function recovered(ref: LeaseRef, now: number): Lease {
  return {
    id: ref.leaseId,
    fence: ref.fence,
    holder: RECOVERED_HOLDER,
    grantedAt: now,
    expiresAt: ref.expiresAt ?? now,
    recovered: true,
  };
}

/** The holder shown for a lease re-registered after a restart (its real holder is not sent on renewal). */
export const RECOVERED_HOLDER = "recovered";

/**
 * Revokes a held lease (an operator's word; `prefix` as in {@link findByPrefix}). The lease stays
 * counted as held — its holder hears of the revoke only at its next renewal and may be running a
 * statement until then — so its slot is not granted again until the holder releases it or it
 * expires, whichever is first. Its renewal fails with `LEASE_LOST`. Revoking it again changes nothing.
 *
 * @example
 * const { lease } = revoke(pool, "3f2a9c1b", now);
 */
export function revoke(state: PoolState, prefix: string, now: number): { lease: Lease; effects: Effects } {
  checkTime(now);
  const lease = findByPrefix(state, prefix);
  lease.revoked = true;
  // An earlier lease revoked in a recovery window stays revoked after it is reaped.
  bury(state, { leaseId: lease.id, fence: lease.fence }, now);
  // An already-expired lease is reaped by the same transition: its slot is free either way.
  const fx = noEffects();
  advance(state, now, fx);
  return { lease, effects: fx };
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
 * withdraw(pool, ["3f…", "9a…"], now)
 */
export function withdraw(
  state: PoolState,
  leaseIds: readonly string[],
  now: number,
): { removed: number; effects: Effects } {
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
  let at = state.recovery?.until ?? Infinity;
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
 * An operator's limit for a live pool, or `null` to return to `configured` (the limit from the
 * environment or options). Kept in the pool's snapshot, so it outlives restarts. Raising it grants
 * queued callers at once; lowering it revokes nothing.
 *
 * @example
 * setLimit(pool, 20, 10, now); setLimit(pool, null, 10, now);
 */
export function setLimit(state: PoolState, limit: number | null, configured: number, now: number): Effects {
  const target = limit === null ? configured : checkInt("limit", limit, 1, BOUNDS.limit);
  const fx = reconfigure(state, { ...state.config, limit: target }, now);
  state.limitOverride = limit === null ? null : target;
  return fx;
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
  else adaptiveFollowsLimit(state);
  const fx = noEffects();
  advance(state, now, fx);
  return fx;
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
    reserved: reservedSlots(state),
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
      ...(l.revoked ? { revoked: true as const } : {}),
    })),
    paused: state.paused,
    queue: { mode: state.config.queue ?? "fifo", lifo: state.standing.lifo },
    prediction: predictionStats(state),
    recovery:
      state.recovery && now < state.recovery.until
        ? { endsInMs: state.recovery.until - now, recovered: state.recovery.recovered }
        : null,
  };
}

function predictionStats(state: PoolState): NonNullable<PoolStats["prediction"]> {
  const p = state.prediction;
  const mean = (sum: number) => (p.waits === 0 ? 0 : Math.round(sum / p.waits));
  return {
    shed: p.shed,
    waits: p.waits,
    meanPredictedMs: mean(p.predictedSumMs),
    meanActualMs: mean(p.actualSumMs),
    meanAbsErrorMs: mean(p.absErrorSumMs),
    early: p.early,
    earlyShare: Math.round(p.earlyShare * 1000) / 1000,
    holdMs: Math.round(p.holdMs),
    shedding: sheddingOn(state),
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
  if (matches.length === 0)
    throw new LeaseError("LEASE_NOT_FOUND", `No held lease has an id starting with \`${prefix}\``);
  if (matches.length > 1) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      `${matches.length} held leases have ids starting with \`${prefix}\`: give more characters`,
    );
  }
  return matches[0]!;
}
