/**
 * Restart safety without a write per call: the recovery window (after Google Doorman's "learning
 * mode"). A backend that keeps its leases in memory persists only a small `Bounds` record, written
 * ahead of need: every fence it hands out is below `fenceCeiling`, and every `expiresAt` it answers
 * is at or before `horizon`. After a restart, fences continue from the ceiling, and while the
 * horizon may still be ahead the pool grants nothing and recovers the live leases from their
 * holders' renewals (`startRecovery`) — only those it can verify (a token over id, fence and
 * expiry, checked by the shell: see `VerifyRef`), and only for their original remaining life.
 */
import { BOUNDS } from "./config.ts";
import { LeaseError, expected } from "./errors.ts";
import type { Lease, LeaseRef, PoolState } from "./types.ts";

/** What a restarted pool must know of the leases it granted before: stored, never per call. */
export interface Bounds {
  /** Every fence handed out so far is below this. */
  readonly fenceCeiling: number;
  /** Every `expiresAt` answered so far (grant or renewal) is at or before this, ms since the epoch. */
  readonly horizon: number;
}

/** Fences reserved per bounds write: one write per this many grants at most. */
export const FENCE_STEP = 100_000;
/**
 * How far past the longest lifetime being handed out a bounds write reaches, ms. It is also about
 * how long granting pauses after a crash under load (the horizon runs this far ahead of the live
 * leases), so it is short; a write every half step (a second) off the request path is cheap.
 */
export const HORIZON_STEP_MS = 2_000;
/**
 * The clock skew the recovery window tolerates between the machine that answered a lease and the
 * one that restarts the object, ms, in either direction (NTP keeps servers within tens of
 * milliseconds of each other; this is several times that). It guards both ways:
 * - a new clock that reads AHEAD would end the window before the old leases really ended: the
 *   window lasts until `horizon + CLOCK_MARGIN_MS`;
 * - a new clock that reads BEHIND would take a lapsed lease for a live one: a renewal is recovered
 *   only while `expiresAt - CLOCK_MARGIN_MS` is still ahead.
 */
export const CLOCK_MARGIN_MS = 250;

/**
 * A per-call `ttlMs` (acquire or renew) may be at most this many times the pool's `leaseTtlMs`.
 * It bounds the recovery window, so a restart never pauses granting longer than
 * `TTL_CAP_FACTOR × leaseTtlMs + HORIZON_STEP_MS + CLOCK_MARGIN_MS` (32.25 s with the default
 * 1.5 s TTL): the horizon reaches the longest lifetime ever handed out, not only those in use.
 *
 * @example
 * acquire(pool, { leaseId, holder, ttlMs: TTL_CAP_FACTOR * pool.config.leaseTtlMs }, now); // the longest allowed
 */
export const TTL_CAP_FACTOR = 20;

/**
 * The longest per-call `ttlMs` a pool accepts: `TTL_CAP_FACTOR` times its lease TTL (and never
 * more than a day).
 *
 * @example
 * maxTtlMs({ leaseTtlMs: 1500 }) // 30000
 */
export function maxTtlMs(config: { readonly leaseTtlMs: number }): number {
  return Math.min(BOUNDS.leaseTtlMs, TTL_CAP_FACTOR * config.leaseTtlMs);
}

/**
 * Whether a lease reference carries a token the coordinator itself issued for its id, fence and
 * `expiresAt`. Supplied by the shell that signs its answers (the Durable Object: an HMAC with a
 * key of its own): the core has no crypto, it only asks.
 *
 * @example
 * renew(pool, leaseRef(lease), now, undefined, (ref) => tokens.verify(ref));
 */
export type VerifyRef = (ref: LeaseRef) => boolean;

/**
 * Puts a restored pool (no leases) into its recovery window: fences continue from the stored
 * ceiling (they only grow across restarts), and if the stored horizon plus the clock margin is
 * still ahead, nothing is granted until then and verified renewals of earlier leases re-register
 * them. A pool restarted after its horizon passed (idle, evicted) or never stored has no window.
 * `revoked`: ids of leases an operator revoked before the restart (the backend keeps them with
 * the revoke): they start as tombstones, so their holders cannot recover them.
 *
 * @example
 * startRecovery(pool, { fenceCeiling: 200_000, horizon: now + 1500 }, now);
 */
export function startRecovery(
  state: PoolState,
  bounds: Bounds | null,
  now: number,
  revoked: Iterable<string> = [],
): void {
  if (bounds === null) return;
  checkBounds(bounds);
  if (bounds.fenceCeiling > state.nextFence) state.nextFence = bounds.fenceCeiling;
  const until = bounds.horizon + CLOCK_MARGIN_MS;
  if (until > now) {
    state.recovery = {
      until,
      horizon: bounds.horizon,
      recoverBelowFence: bounds.fenceCeiling,
      recovered: 0,
      tombstones: new Set(revoked),
    };
  }
}

function checkBounds(b: Bounds): void {
  if (
    typeof b !== "object" ||
    b === null ||
    !Number.isSafeInteger(b.fenceCeiling) ||
    b.fenceCeiling < 1 ||
    !Number.isFinite(b.horizon)
  ) {
    throw new LeaseError("INTERNAL", expected("bounds", "{ fenceCeiling, horizon }", b));
  }
}

/** Whether everything `leases` says (fence, expiry) is covered by `bounds`. */
export function covers(bounds: Bounds, leases: Iterable<Lease>): boolean {
  for (const l of leases) if (l.fence >= bounds.fenceCeiling || l.expiresAt > bounds.horizon) return false;
  return true;
}

/**
 * The bounds to write next, or null when `last` (the bounds last written) still has room: a new
 * record is due when the next fence, or the latest expiry being handed out (`handed`: grants and
 * renewals about to be answered), comes within half a step of them. The result covers both by a
 * full step and never lowers what was written. With nothing handed out it reserves fences only
 * (at start, before the first grant): an idle pool's horizon is left to pass.
 *
 * @example
 * const next = nextBounds(pool, last, granted, now); if (next) write(next);
 */
export function nextBounds(state: PoolState, last: Bounds, handed: Iterable<Lease>, now: number): Bounds | null {
  let latest = -Infinity;
  let fence = state.nextFence;
  for (const l of handed) {
    if (l.expiresAt > latest) latest = l.expiresAt;
    if (l.fence >= fence) fence = l.fence + 1;
  }
  const fenceDue = last.fenceCeiling - fence < FENCE_STEP / 2;
  const horizonDue = latest > -Infinity && last.horizon - latest < HORIZON_STEP_MS / 2;
  if (!fenceDue && !horizonDue) return null;
  // A horizon reaching a step past now + the lifetime handed out: renewals at that lifetime stay
  // inside it for half a step before the next write is due.
  const horizon = horizonDue ? Math.max(last.horizon, Math.max(latest, now) + HORIZON_STEP_MS) : last.horizon;
  return { fenceCeiling: Math.max(last.fenceCeiling, fence + FENCE_STEP), horizon };
}

/** The bounds a backend knows to be durable and the last ones it wrote (maybe not yet durable). */
export interface BoundsLog {
  confirmed: Bounds;
  written: Bounds;
}

/**
 * A backend's bounds bookkeeping, from the stored record (null: none yet).
 *
 * @example
 * const log = boundsLog(storage.get("bounds") ?? null);
 */
export function boundsLog(stored: Bounds | null): BoundsLog {
  const b = stored ?? { fenceCeiling: 1, horizon: 0 };
  return { confirmed: b, written: b };
}

/**
 * What a backend does when a step hands out `handed` (grants, renewals): `write` is the record to
 * write in the background now (or null), and `wait` says whether the answer must wait until the
 * bounds written so far are durable (only when `handed` reaches past the confirmed bounds).
 *
 * @example
 * const { write, wait } = planBounds(log, pool, granted, now);
 */
export function planBounds(
  log: BoundsLog,
  state: PoolState,
  handed: readonly Lease[],
  now: number,
): { write: Bounds | null; wait: boolean } {
  const write = nextBounds(state, log.written, handed, now);
  if (write !== null) log.written = write;
  return { write, wait: handed.length > 0 && !covers(log.confirmed, handed) };
}

/**
 * Records that `bounds` (written earlier) are durable.
 *
 * @example
 * await storage.sync(); confirmBounds(log, written);
 */
export function confirmBounds(log: BoundsLog, bounds: Bounds): void {
  log.confirmed = {
    fenceCeiling: Math.max(log.confirmed.fenceCeiling, bounds.fenceCeiling),
    horizon: Math.max(log.confirmed.horizon, bounds.horizon),
  };
}
