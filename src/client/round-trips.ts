import { stopMarginMs } from "./heartbeat.ts";

/**
 * The claim window a client asks for, from its measured round trips to the coordinator: a waiter
 * whose caller vanished never claims its grant, so the slot comes back one window after the grant;
 * a live holder's claim (one renewal) must reach the coordinator inside it. The window is
 * {@link CLAIM_WINDOW.roundTrips} round trips, bounded by {@link CLAIM_WINDOW.minMs} below (timer
 * and event-loop stalls of a loaded process, which a round trip measured at a fraction of a
 * millisecond does not show: `npm run bench:retries` lost leases to late claims at a 100 ms and a
 * 250 ms floor, and the overload bench more at 250 ms than at a fixed 500)
 * and {@link CLAIM_WINDOW.maxMs} above (a coordinator that slow loses little more by a longer wait).
 */
export const CLAIM_WINDOW = {
  /** Window before any round trip was measured, ms: a cross-region round trip fits well inside a third of it. */
  initialMs: 500,
  minMs: 500,
  maxMs: 1000,
  /** Round trips (the smoothed round trip plus four of its deviations, as TCP times retransmissions) per window. */
  roundTrips: 4,
} as const;

/**
 * A client's recent round trips to its coordinator (acquires, less the time they waited in the
 * queue; renewals; releases),
 * smoothed as TCP smooths them (RFC 6298: gain 1/8 on the mean, 1/4 on the deviation), and what
 * follows from them: the claim window to ask for and when to send the claim.
 *
 * @example
 * const trips = new RoundTrips();
 * trips.record(40); trips.claimWindowMs(); // 4 × (40 + 4 × 20) = 480
 */
export class RoundTrips {
  #smoothedMs: number | undefined;
  #deviationMs = 0;

  /** Counts one call's round trip, ms (the time from sending it to its answer). */
  record(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    const smoothed = this.#smoothedMs;
    if (smoothed === undefined) {
      this.#smoothedMs = ms;
      this.#deviationMs = ms / 2;
      return;
    }
    this.#deviationMs += (Math.abs(ms - smoothed) - this.#deviationMs) / 4;
    this.#smoothedMs = smoothed + (ms - smoothed) / 8;
  }

  /** A round trip that most calls stay under, ms (mean plus four deviations); undefined before any. */
  get boundMs(): number | undefined {
    const smoothed = this.#smoothedMs;
    return smoothed === undefined ? undefined : smoothed + 4 * this.#deviationMs;
  }

  /**
   * The claim window to ask for, ms: {@link CLAIM_WINDOW.roundTrips} of {@link boundMs}, within
   * the bounds; {@link CLAIM_WINDOW.initialMs} before any round trip was measured.
   */
  claimWindowMs(): number {
    const bound = this.boundMs;
    if (bound === undefined) return CLAIM_WINDOW.initialMs;
    return Math.round(Math.min(CLAIM_WINDOW.maxMs, Math.max(CLAIM_WINDOW.minMs, CLAIM_WINDOW.roundTrips * bound)));
  }
}

/**
 * When to send the claim of a grant from the queue, ms after its answer arrived: a third of the
 * window (work that ends sooner makes no claim call), but early enough that the claim's answer is
 * back before the lease ends as its holder counts (the window less its stop margin, see
 * `stopMarginMs`): the grant took part of a round trip to arrive and the claim takes a whole one,
 * so two round trips before that. A third of the window when no round trip was measured yet (the
 * grant's own answer is one: see `Leases`). Never negative.
 *
 * @example
 * claimDelayMs(480, 40) // 160
 * claimDelayMs(1000, 300) // 200
 */
export function claimDelayMs(windowMs: number, roundTripMs: number | undefined): number {
  const third = Math.floor(windowMs / 3);
  if (roundTripMs === undefined) return third;
  return Math.max(0, Math.min(third, Math.floor(windowMs - stopMarginMs(windowMs) - 2 * roundTripMs)));
}
