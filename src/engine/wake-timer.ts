/**
 * One timer per coordinator instance, for the next moment the pool must be brought to time (a
 * deadline or a lease expiry). It only has to be early enough: a timer that fires for a deadline
 * or expiry that no longer matters runs a tick that finds nothing to do and re-arms.
 *
 * @example
 * const timer = new WakeTimer(() => tickNow());
 * timer.arm(waiters.wakeAt(pool));
 */
export class WakeTimer {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #at = Infinity;
  readonly #onWake: () => void;
  readonly #keepWhenIdle: boolean;

  /**
   * `keepWhenIdle`: when nothing is due (`arm(null)`), a timer already set is left to fire once
   * for nothing instead of being cleared. A coordinator that answers an acquire and a release per
   * request would otherwise set a timer on every grant and clear it on every release.
   */
  constructor(onWake: () => void, options: { keepWhenIdle?: boolean } = {}) {
    this.#onWake = onWake;
    this.#keepWhenIdle = options.keepWhenIdle === true;
  }

  /** Fires at `at` (ms since the epoch) unless it already fires earlier; null: nothing is due (see `keepWhenIdle`). */
  arm(at: number | null): void {
    if (at === null) {
      if (!this.#keepWhenIdle) this.clear();
      return;
    }
    if (this.#timer !== undefined && this.#at <= at) return;
    clearTimeout(this.#timer);
    this.#at = at;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#at = Infinity;
        this.#onWake();
      },
      Math.max(0, at - Date.now()),
    );
  }

  /** Fires again after `delayMs` (e.g. retrying a tick the storage refused). */
  retryIn(delayMs: number): void {
    this.clear();
    this.arm(Date.now() + delayMs);
  }

  clear(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#at = Infinity;
  }
}
