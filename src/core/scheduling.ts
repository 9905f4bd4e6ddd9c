import type { Lease, PoolState, Priority, StandingQueue, WaitPrediction, Waiter } from "./types.ts";
import { PRIORITIES } from "./types.ts";

/**
 * How long a slowdown must last before the adaptive limit takes it as the new normal, ms: the
 * baseline rises toward slower hold times with this time constant (and falls to faster ones at
 * once), so a database that stays slow keeps a shrunk limit for tens of seconds, not for a number
 * of releases that a busy pool passes in a moment.
 */
export const BASELINE_RISE_MS = 30_000;
/** The baseline falls toward faster hold times with this time constant, ms. */
export const BASELINE_FALL_MS = 2_000;
/**
 * Hold times within this many ms of the tolerated baseline are noise (scheduling, a GC pause), not
 * congestion: millisecond queries jitter by more than 50 % on a busy machine.
 */
export const NOISE_MS = 2;

/** The limit in force now: the adaptive one when enabled, never above the configured maximum, nor a shard's share. */
export function capacity(state: PoolState): number {
  const max = state.config.limit;
  const own = state.adaptive ? Math.max(1, Math.min(max, Math.floor(state.adaptive.limit))) : max;
  return state.share === undefined ? own : Math.min(own, state.share);
}

function batchHeld(state: PoolState): number {
  let n = 0;
  for (const lease of state.leases.values()) if (lease.priority === "batch") n++;
  return n;
}

/**
 * The reserved slots in force: `reserved`, clamped to leave one slot of the limit in force
 * (`capacity`) to everyone. A limit that moves under the fixed count — learned (`LEASE_LIMIT=auto`),
 * set by an operator, or shrunk by the adaptive limit — never lets the reserve take the whole pool.
 */
export function reservedSlots(state: PoolState): number {
  return Math.max(0, Math.min(state.config.reserved ?? 0, capacity(state) - 1));
}

/**
 * An adaptive limit that has observed no hold yet starts at the limit in force: a limit that moved
 * before any lease came back (`LEASE_LIMIT=auto`'s first learning lifts the start limit of 1)
 * carries it along, rather than leaving it to creep up from where it was.
 */
export function adaptiveFollowsLimit(state: PoolState): void {
  if (state.adaptive && state.adaptive.samples === 0) state.adaptive.limit = state.config.limit;
}

/** Whether a waiter of `priority` may take a slot now. */
export function eligible(state: PoolState, priority: Priority): boolean {
  // An operator drain: nobody is granted, whatever their class.
  if (state.paused) return false;
  const held = state.leases.size;
  const cap = capacity(state);
  if (priority === "critical") return held < cap;
  if (held >= cap - reservedSlots(state)) return false;
  if (priority === "batch" && state.config.batchMax !== undefined) return batchHeld(state) < state.config.batchMax;
  return true;
}

/**
 * `queue: "adaptive"`: a queue whose oldest waiter has waited longer than this, ms, is standing
 * (CoDel's target). A healthy pool at its limit shows waits of a hold time over the limit in
 * passing (milliseconds); 50 ms is a tenth of the claim window at its 500 ms floor, what a grant to a caller
 * that left costs, and already longer than the statements a lease is for. CoDel's 5 ms (and
 * Facebook's M = 5 ms) is for packets and RPCs of microseconds; a wait here includes a round trip to
 * the coordinator and one to the database, so 5 ms would call every burst a standing queue.
 */
export const QUEUE_TARGET_MS = 50;
/**
 * `queue: "adaptive"`: how long the queue must stay above the target before newest-first is in
 * force, ms (CoDel's interval; Facebook's N = 100 ms). Long enough that a burst that drains in a
 * hold time or two (a cron tick, a cold start) never flips the order; short next to how long
 * callers wait before they give up (a client's ~1 s, the 500–1000 ms claim window, a third of the
 * 1.5 s TTL), so the newest waiters are served while they are still there.
 */
export const QUEUE_INTERVAL_MS = 100;

/**
 * Brings the standing-queue detector of `queue: "adaptive"` to `now`; called whenever the queue
 * may have changed (before and after free slots are handed out). The queue is standing while its
 * oldest waiter is older than the target without a break; newest-first is in force once that has
 * lasted the interval, and ends when the queue drains below the target (empty, or every waiter
 * left younger than it). With `queue: "fifo"` it stays off.
 *
 * The oldest waiter's age only grows between transitions and only drops when a waiter leaves
 * (in a transition), so a check per transition sees every break; a queue that crossed the target
 * between two transitions is standing from the moment it crossed, not from when it was seen.
 */
export function observeQueue(state: PoolState, now: number): void {
  const s = state.standing;
  // FIFO pools never scan for it.
  const oldest = state.config.queue !== "adaptive" || state.queue.length === 0 ? undefined : oldestEnqueuedAt(state);
  if (oldest === undefined || now - oldest <= QUEUE_TARGET_MS) {
    s.since = null;
    s.lifo = false;
    return;
  }
  s.since ??= oldest + QUEUE_TARGET_MS;
  if (now - s.since >= QUEUE_INTERVAL_MS) s.lifo = true;
}

/** The queue is in arrival order, which is not enqueue-time order after the clock stepped back: take the minimum. */
function oldestEnqueuedAt(state: PoolState): number {
  let at = Infinity;
  for (const w of state.queue) if (w.enqueuedAt < at) at = w.enqueuedAt;
  return at;
}

/** A fresh standing-queue detector: no standing queue, FIFO. */
export function noStandingQueue(): StandingQueue {
  return { since: null, lifo: false };
}

/**
 * The index in the queue of the waiter to grant next, or -1 when none may take a slot now.
 * Plain pools (no classes, no tenants queued) take the head — or, while a standing queue has
 * newest-first in force, the tail. With classes and tenants the class and the tenants' turns
 * decide as ever; only the pick among equal candidates follows the mode.
 */
export function pickNext(state: PoolState): number {
  // Nobody may take a slot (full, or paused): no scan, whatever the queue holds.
  if (state.queue.length === 0 || !eligible(state, "critical")) return -1;
  const lifo = state.standing.lifo;
  if (!state.queue.some(isScheduled)) return eligible(state, "normal") ? (lifo ? state.queue.length - 1 : 0) : -1;
  for (const priority of PRIORITIES) {
    if (!eligible(state, priority)) continue;
    let best = -1;
    let bestTurn = Infinity;
    for (let i = 0; i < state.queue.length; i++) {
      const w = state.queue[i]!;
      if ((w.priority ?? "normal") !== priority) continue;
      const turn = state.lastServed.get(w.tenant ?? "") ?? -1;
      // Ties (within a tenant, and between equal turns) go by the mode: FIFO keeps the earlier
      // index (arrival order), LIFO takes the later one (the newest).
      if (turn < bestTurn || (lifo && turn === bestTurn)) {
        best = i;
        bestTurn = turn;
      }
    }
    if (best >= 0) return best;
  }
  return -1;
}

/** Records that `w` was granted, for the tenants' turns; keeps the memory bounded. */
export function served(state: PoolState, w: Waiter): void {
  if (state.lastServed.size > 10_000) state.lastServed.clear();
  state.lastServed.set(w.tenant ?? "", ++state.serveSeq);
}

/** True when a waiter uses a class or tenant, so the queue needs a scan rather than its head. */
export function isScheduled(w: { priority?: Priority | undefined; tenant?: string | undefined }): boolean {
  return (w.priority !== undefined && w.priority !== "normal") || (w.tenant !== undefined && w.tenant !== "");
}

/**
 * Feeds one hold time (grant to release) into the adaptive limit, in the spirit of Netflix's
 * Gradient2: when recent hold times rise above the long-run baseline by more than the tolerance,
 * the limit shrinks by their ratio; otherwise it grows by about √limit per step, up to the maximum
 * (Gradient2 adds the √limit allowance even while congested, which lets a small pool creep back
 * up under sustained slowness; here it applies only when not congested). The baseline rises slowly in time (`BASELINE_RISE_MS`), so a database that stays slow is taken
 * as the new normal only after tens of seconds, and falls at once when holds get faster.
 */
export function observeHold(state: PoolState, lease: Lease, holdMs: number, now: number): void {
  const a = state.adaptive;
  const cfg = state.config.adaptive;
  if (!a || !cfg) return;
  void lease;
  const sample = Math.max(0.1, holdMs);
  if (a.samples === 0) {
    a.recentMs = sample;
    a.baselineMs = sample;
  } else {
    a.recentMs = a.recentMs * 0.8 + sample * 0.2;
    // Rises slowly (a slowdown is news for tens of seconds), falls fast (faster is the real speed).
    const dt = Math.max(0, now - (a.lastSampleAt ?? now));
    const tau = a.recentMs > a.baselineMs ? BASELINE_RISE_MS : BASELINE_FALL_MS;
    a.baselineMs += (a.recentMs - a.baselineMs) * (1 - Math.exp(-dt / tau));
  }
  a.lastSampleAt = now;
  a.samples++;
  const tolerance = cfg.tolerance ?? 1.5;
  const gradient = Math.max(0.5, Math.min(1, (tolerance * a.baselineMs + NOISE_MS) / a.recentMs));
  // Congested: shrink by the gradient. Not congested: probe upward by about √limit per step.
  const target = gradient < 1 ? a.limit * gradient : a.limit + Math.sqrt(a.limit);
  const next = a.limit * 0.8 + target * 0.2;
  a.limit = Math.max(cfg.floor, Math.min(state.config.limit, next));
}

/**
 * A waiter is answered at once (`ACQUIRE_TIMEOUT`) only when its predicted wait is at least this
 * many times what is left of its deadline: a prediction that is off by less than this factor never
 * sheds a caller who would have been served in time.
 */
export const SHED_MARGIN = 1.5;
/** No shed before this many waiters were granted from the queue with a prediction (its error is then known). */
export const SHED_MIN_SAMPLES = 20;
/**
 * Shedding pauses while more than this share of recent waits granted from the queue came in under
 * their prediction divided by {@link SHED_MARGIN} — the waits a shed on that prediction would have
 * got wrong: the stated bound on callers shed who would have been served in time.
 */
export const SHED_MAX_EARLY_SHARE = 0.05;

/** A fresh prediction: nothing observed. */
export function noPrediction(): WaitPrediction {
  return {
    holdMs: 0,
    holds: 0,
    waits: 0,
    predictedSumMs: 0,
    actualSumMs: 0,
    absErrorSumMs: 0,
    early: 0,
    earlyShare: 0,
    shed: 0,
  };
}

/** Feeds one hold time (grant to release) into the prediction's recent mean. */
export function observeHoldTime(state: PoolState, holdMs: number): void {
  const p = state.prediction;
  p.holdMs = p.holds === 0 ? holdMs : p.holdMs + (holdMs - p.holdMs) / 16;
  p.holds++;
}

/** Records a waiter's actual wait against its prediction as it is granted from the queue (oldest first). */
export function observeWait(state: PoolState, w: Waiter, now: number): void {
  // Newest-first serves out of the order the forecast assumed: such a wait says nothing of it.
  if (w.predictedMs === undefined || state.standing.lifo) return;
  const p = state.prediction;
  const actual = Math.max(0, now - w.enqueuedAt);
  const early = actual < w.predictedMs / SHED_MARGIN ? 1 : 0;
  p.waits++;
  p.predictedSumMs += w.predictedMs;
  p.actualSumMs += actual;
  p.absErrorSumMs += Math.abs(actual - w.predictedMs);
  p.early += early;
  p.earlyShare += (early - p.earlyShare) / 32;
}

/** Each class's place in `PRIORITIES`, most urgent first. */
const RANK: Record<Priority, number> = { critical: 0, normal: 1, batch: 2 };

/** A predicted wait: ms, and how many waiters it counted as certain to go first. */
export interface WaitForecast {
  ms: number;
  ahead: number;
}

/** How many slots a waiter of `priority` may use: the reserve is for `critical`, `batch` has its cap. */
function slotsFor(state: PoolState, priority: Priority): number {
  const cap = capacity(state);
  const slots = priority === "critical" ? cap : cap - (state.config.reserved ?? 0);
  const batch = priority === "batch" && state.config.batchMax !== undefined ? state.config.batchMax : slots;
  return Math.max(1, Math.min(slots, batch));
}

/**
 * How long a newcomer of `priority` and `tenant` would wait for a slot at `now`, from the recent
 * mean hold time and the waiters certain to go before it: the slots it may use free one every
 * `holdMs / slots` on average, and it is served after those ahead of it — every waiter of a more
 * urgent class, and of its own class the earlier waiters of its own tenant (tenants take turns, so
 * others' waiters may or may not go first: not counted), none of them while newest-first is in
 * force — each only if its own deadline lets it still be there at its turn. Counting only the
 * certain ones errs short: a short prediction sheds no one. Undefined before any hold time.
 *
 * @example
 * predictWaitMs(pool, "normal", undefined, now) // { ms: 400, ahead: 3 }: 100 ms holds, 1 slot
 */
export function predictWaitMs(
  state: PoolState,
  priority: Priority,
  tenant: string | undefined,
  now: number,
): WaitForecast | undefined {
  const p = state.prediction;
  if (p.holds === 0) return undefined;
  const rank = RANK[priority];
  const key = tenant ?? "";
  const lifo = state.standing.lifo;
  const every = p.holdMs / slotsFor(state, priority);
  let ahead = 0;
  for (const w of state.queue) {
    const r = w.priority === undefined ? 1 : RANK[w.priority];
    if (r > rank || (r === rank && (lifo || (w.tenant ?? "") !== key))) continue;
    // One that gives up before its turn takes no slot.
    if (w.deadline - now >= (ahead + 1) * every) ahead++;
  }
  return { ms: Math.ceil((ahead + 1) * every), ahead };
}

/**
 * Whether a caller predicted to wait `forecast` with `remainingMs` left of its deadline is told at
 * once: only when at least one waiter is certain to go first (the wait of one next in line is the
 * remainder of a hold, too uncertain to call), the predicted wait is at least {@link SHED_MARGIN}
 * times the time left, and predictions are trusted now ({@link sheddingOn}).
 */
export function hopeless(
  state: PoolState,
  forecast: WaitForecast | undefined,
  remainingMs: number,
  trust: "measured" | "holds" = "measured",
): boolean {
  return (
    forecast !== undefined &&
    forecast.ahead >= 1 &&
    forecast.ms >= SHED_MARGIN * remainingMs &&
    sheddingOn(state, trust)
  );
}

/**
 * Whether predictions are trusted enough to shed now. Always: slots free at the observed pace (not
 * paused, not recovering), {@link SHED_MIN_SAMPLES} hold times observed, and the recent share of
 * waits served far sooner than predicted is small once enough were measured. A newcomer's forecast
 * (`"measured"`) also needs that many waits measured; the oldest waiters' under newest-first
 * (`"holds"`, see {@link hopelessUnderLifo}) does not: newest-first leaves few waits to measure,
 * and counting only the waiters already there, its forecast errs short.
 */
export function sheddingOn(state: PoolState, trust: "measured" | "holds" = "measured"): boolean {
  const p = state.prediction;
  if (state.paused || state.recovery || p.holds < SHED_MIN_SAMPLES) return false;
  if (p.waits < SHED_MIN_SAMPLES) return trust === "holds";
  return p.earlyShare <= SHED_MAX_EARLY_SHARE;
}

/**
 * Under newest-first (`queue: "adaptive"` with a standing queue) the oldest waiters are served
 * last: every newer one goes first. In a plain queue (no classes, no tenants), the oldest waiters
 * whose wait behind all the newer ones is hopeless by {@link hopeless} (counting no newcomer yet to
 * come: it errs short) leave the queue now and are returned, oldest first, rather than at their deadlines.
 */
export function hopelessUnderLifo(state: PoolState, now: number): Waiter[] {
  if (!state.standing.lifo || state.queue.length < 2 || !sheddingOn(state, "holds")) return [];
  if (state.queue.some(isScheduled)) return [];
  const every = state.prediction.holdMs / slotsFor(state, "normal");
  let n = 0;
  for (const w of state.queue) {
    const ahead = state.queue.length - 1 - n;
    if (!hopeless(state, { ms: Math.ceil((ahead + 1) * every), ahead }, w.deadline - now, "holds")) break;
    n++;
  }
  return n === 0 ? [] : state.queue.splice(0, n);
}
