import { isLeaseError } from "../core/index.ts";

/**
 * What to do when the coordinator itself cannot answer (unreachable, restarting, overloaded):
 * - `closed`: fail the request with 503 `COORDINATOR_UNAVAILABLE`. The database's connection limit
 *   holds without exception, at the price of an outage of the coordinator becoming an outage of
 *   the app.
 * - `budget`: let up to `budget` requests per isolate run without a lease. The app stays up, but the
 *   global limit is no longer enforced: with I isolates up to I × budget extra connections may open,
 *   so choose `budget` with the database's spare connections and the isolate count in mind.
 */
export type SafeModeOptions = { readonly mode: "closed" } | { readonly mode: "budget"; readonly budget: number };

/** A safe mode's counters: plain data, shown in stats. */
export interface SafeModeState {
  readonly mode: "closed" | "budget";
  readonly budget: number;
  /** Requests running on the local budget now. */
  readonly inUse: number;
  /** Requests that ran on the local budget since the isolate started. */
  readonly admitted: number;
  /** Requests refused because the coordinator was unavailable and the budget spent (or closed). */
  readonly refused: number;
}

/**
 * The per-isolate fallback used when acquiring a lease fails with `COORDINATOR_UNAVAILABLE`.
 *
 * @example
 * const safe = new SafeMode({ mode: "budget", budget: 2 });
 * const slot = await safe.acquire(() => leases.acquire(), error);
 */
export class SafeMode {
  readonly options: SafeModeOptions;
  #inUse = 0;
  #admitted = 0;
  #refused = 0;

  constructor(options: SafeModeOptions = { mode: "closed" }) {
    this.options = options;
  }

  /**
   * Called with the error of a failed acquire. Rethrows it unless it is `COORDINATOR_UNAVAILABLE`
   * and the budget has room; then returns the function that gives the budget slot back (call it
   * exactly once).
   */
  fallback(error: unknown): () => void {
    if (!isLeaseError(error) || error.code !== "COORDINATOR_UNAVAILABLE") throw error;
    if (this.options.mode === "closed" || this.#inUse >= this.options.budget) {
      this.#refused++;
      throw error;
    }
    this.#inUse++;
    this.#admitted++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#inUse--;
    };
  }

  toJSON(): SafeModeState {
    return {
      mode: this.options.mode,
      budget: this.options.mode === "budget" ? this.options.budget : 0,
      inUse: this.#inUse,
      admitted: this.#admitted,
      refused: this.#refused,
    };
  }
}
