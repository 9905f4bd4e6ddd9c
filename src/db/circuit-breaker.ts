/** When a breaker opens and how long it stays open. */
export interface BreakerOptions {
  /** Consecutive failures that open the circuit. */
  readonly failureThreshold: number;
  /** How long an open circuit fails fast before letting one probe through, ms. */
  readonly openMs: number;
}

export const DEFAULT_BREAKER: BreakerOptions = { failureThreshold: 5, openMs: 5000 };

/**
 * A breaker's whole state: plain data, so it can be shown in `/health`, logged, or persisted and
 * restored. `closed` lets calls through; `open` fails fast until `openedAt + openMs`; `half-open`
 * lets exactly one probe through and waits for its outcome.
 */
export type BreakerState =
  | { readonly state: "closed"; readonly failures: number }
  | { readonly state: "open"; readonly openedAt: number; readonly failures: number }
  | { readonly state: "half-open"; readonly probeStartedAt: number; readonly failures: number };

export const CLOSED: BreakerState = { state: "closed", failures: 0 };

/**
 * Asks to make a call at `now`. Returns whether it may proceed and the new state; an open circuit
 * past its `openMs` turns half-open and admits this caller as the one probe. A half-open circuit
 * whose probe has not answered within `openMs` admits a new probe (the first one was lost).
 *
 * @example
 * const { allowed, state } = admit(breaker, DEFAULT_BREAKER, Date.now());
 */
export function admit(
  s: BreakerState,
  options: BreakerOptions,
  now: number,
): { allowed: boolean; state: BreakerState; retryAfterMs: number } {
  if (s.state === "closed") return { allowed: true, state: s, retryAfterMs: 0 };
  const since = s.state === "open" ? s.openedAt : s.probeStartedAt;
  if (now - since >= options.openMs) {
    return { allowed: true, state: { state: "half-open", probeStartedAt: now, failures: s.failures }, retryAfterMs: 0 };
  }
  return { allowed: false, state: s, retryAfterMs: Math.max(1, since + options.openMs - now) };
}

/**
 * Records a success: the circuit closes and the failure count resets.
 *
 * @example
 * breaker = succeeded(breaker);
 */
export function succeeded(_s: BreakerState): BreakerState {
  return CLOSED;
}

/**
 * Records a database failure at `now`: a failed probe reopens the circuit; the
 * `failureThreshold`-th consecutive failure opens it.
 *
 * @example
 * breaker = failed(breaker, DEFAULT_BREAKER, Date.now());
 */
export function failed(s: BreakerState, options: BreakerOptions, now: number): BreakerState {
  const failures = s.failures + 1;
  if (s.state === "half-open" || failures >= options.failureThreshold)
    return { state: "open", openedAt: now, failures };
  if (s.state === "open") return { state: "open", openedAt: s.openedAt, failures };
  return { state: "closed", failures };
}

/**
 * A breaker's state in a mutable cell, one per database per isolate. Only the transitions above
 * decide; this holds the result and the clock.
 *
 * @example
 * const breaker = new CircuitBreaker("main", DEFAULT_BREAKER);
 * if (!breaker.admit().allowed) throw unavailable();
 */
export class CircuitBreaker {
  readonly name: string;
  readonly options: BreakerOptions;
  #state: BreakerState;
  readonly #now: () => number;

  constructor(
    name: string,
    options: BreakerOptions = DEFAULT_BREAKER,
    initial: BreakerState = CLOSED,
    now: () => number = Date.now,
  ) {
    this.name = name;
    this.options = options;
    this.#state = initial;
    this.#now = now;
  }

  get state(): BreakerState {
    return this.#state;
  }

  /** See {@link admit}. */
  admit(): { allowed: boolean; retryAfterMs: number } {
    const result = admit(this.#state, this.options, this.#now());
    this.#state = result.state;
    return { allowed: result.allowed, retryAfterMs: result.retryAfterMs };
  }

  succeeded(): void {
    this.#state = succeeded(this.#state);
  }

  failed(): void {
    this.#state = failed(this.#state, this.options, this.#now());
  }

  /** The state as shown to operators: plain JSON. */
  toJSON(): BreakerState & { name: string } {
    return { name: this.name, ...this.#state };
  }
}
