import type { Lease, PoolState, Priority, Waiter } from "./types.ts";
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

/** The limit in force now: the adaptive one when enabled, never above the configured maximum. */
export function capacity(state: PoolState): number {
  const max = state.config.limit;
  return state.adaptive ? Math.max(1, Math.min(max, Math.floor(state.adaptive.limit))) : max;
}

function batchHeld(state: PoolState): number {
  let n = 0;
  for (const lease of state.leases.values()) if (lease.priority === "batch") n++;
  return n;
}

/** Whether a waiter of `priority` may take a slot now. */
export function eligible(state: PoolState, priority: Priority): boolean {
  // An operator drain: nobody is granted, whatever their class.
  if (state.paused) return false;
  const held = state.leases.size;
  const cap = capacity(state);
  if (priority === "critical") return held < cap;
  if (held >= cap - (state.config.reserved ?? 0)) return false;
  if (priority === "batch" && state.config.batchMax !== undefined) return batchHeld(state) < state.config.batchMax;
  return true;
}

/**
 * The index in the queue of the waiter to grant next, or -1 when none may take a slot now.
 * Plain FIFO pools (no classes, no tenants queued) take the head.
 */
export function pickNext(state: PoolState): number {
  // Nobody may take a slot (full, or paused): no scan, whatever the queue holds.
  if (state.queue.length === 0 || !eligible(state, "critical")) return -1;
  if (!state.queue.some(isScheduled)) return eligible(state, "normal") ? 0 : -1;
  for (const priority of PRIORITIES) {
    if (!eligible(state, priority)) continue;
    let best = -1;
    let bestTurn = Infinity;
    for (let i = 0; i < state.queue.length; i++) {
      const w = state.queue[i]!;
      if ((w.priority ?? "normal") !== priority) continue;
      const turn = state.lastServed.get(w.tenant ?? "") ?? -1;
      // Earlier index wins ties: arrival order within a tenant, and between equal turns.
      if (turn < bestTurn) {
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
