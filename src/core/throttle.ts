/**
 * Client-side adaptive throttling (Google SRE book, "Handling Overload"): a client counts what it
 * asked a backend for and what the backend accepted over a sliding window, and refuses locally with
 * probability `max(0, (requests − K·accepts) / (requests + 1))`. While the backend accepts more
 * than `1/K` of what it is asked, nothing is refused; under overload the backend keeps receiving
 * about `K` times what it accepts, and the surplus is answered at once, where it is. Used by the
 * database layer's retry budget and by the lease clients' local shed. The time is the caller's
 * argument; durations are milliseconds.
 */

/** A window's counts: what was asked for (refused locally included) and what the backend accepted. */
export interface BudgetCounts {
  readonly requests: number;
  readonly accepts: number;
}

/**
 * The chance that a request is refused locally: `max(0, (requests − K·accepts) / (requests + 1))`.
 * Zero while refusals stay under `1 − 1/K` of requests; near one when nearly every request fails.
 *
 * @example
 * refusalChance({ requests: 100, accepts: 0 }, 2) // 0.990…
 */
export function refusalChance(counts: BudgetCounts, ratio: number): number {
  return Math.max(0, (counts.requests - ratio * counts.accepts) / (counts.requests + 1));
}

/**
 * Requests and accepts over the last `windowMs`, kept in buckets of `bucketMs`: counts older than
 * the window leave it one bucket at a time.
 *
 * @example
 * const w = new AcceptWindow(2000, 100);
 * w.request(now); w.accept(now);
 * w.counts(now) // { requests: 1, accepts: 1 }
 */
export class AcceptWindow {
  readonly windowMs: number;
  readonly bucketMs: number;
  // A ring of buckets; `#epochs[i]` says which bucket number (now / bucketMs) slot i counts for.
  readonly #requests: number[];
  readonly #accepts: number[];
  readonly #epochs: number[];

  constructor(windowMs: number, bucketMs: number) {
    this.windowMs = windowMs;
    this.bucketMs = bucketMs;
    const n = Math.max(1, Math.ceil(windowMs / bucketMs));
    this.#requests = new Array<number>(n).fill(0);
    this.#accepts = new Array<number>(n).fill(0);
    this.#epochs = new Array<number>(n).fill(-1);
  }

  /** Counts one request asked for at `now`. */
  request(now: number): void {
    this.#requests[this.#slot(now)]! += 1;
  }

  /** Counts one request the backend accepted at `now`. */
  accept(now: number): void {
    this.#accepts[this.#slot(now)]! += 1;
  }

  /** The window's counts at `now`. */
  counts(now: number): BudgetCounts {
    const current = Math.floor(now / this.bucketMs);
    const n = this.#epochs.length;
    let requests = 0;
    let accepts = 0;
    for (let i = 0; i < n; i++) {
      // Only buckets of the last `n` bucket numbers count: an old slot not yet reused is stale.
      if (current - this.#epochs[i]! < n) {
        requests += this.#requests[i]!;
        accepts += this.#accepts[i]!;
      }
    }
    return { requests, accepts };
  }

  #slot(now: number): number {
    const epoch = Math.floor(now / this.bucketMs);
    const n = this.#epochs.length;
    const i = ((epoch % n) + n) % n;
    if (this.#epochs[i] !== epoch) {
      this.#epochs[i] = epoch;
      this.#requests[i] = 0;
      this.#accepts[i] = 0;
    }
    return i;
  }
}
