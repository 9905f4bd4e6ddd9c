import { toDatabaseError } from "./errors.ts";
import { isRetryable } from "./retry.ts";

/** How much retrying a budget allows. Durations are milliseconds. */
export interface RetryBudgetOptions {
  /**
   * `K` of client-side adaptive throttling: retries flow freely while attempts stay under `K` times
   * the attempts the database accepted. 2 = up to one failed attempt per accepted one.
   */
  readonly ratio: number;
  /** How far back attempts count. */
  readonly windowMs: number;
  /** The window's granularity: counts older than `windowMs` leave it one bucket at a time. */
  readonly bucketMs: number;
  /**
   * Below this many attempts in the window no retry is refused: a quiet isolate's retries cannot
   * multiply anyone's load, and the formula alone would refuse half the retries of a fresh
   * isolate whose first attempt failed.
   */
  readonly minRequests: number;
}

export const DEFAULT_RETRY_BUDGET: RetryBudgetOptions = {
  ratio: 2,
  windowMs: 120_000,
  bucketMs: 1000,
  minRequests: 10,
};

/** The window's counts: attempts asked for (refused retries included) and attempts the database accepted. */
export interface BudgetCounts {
  readonly requests: number;
  readonly accepts: number;
}

/**
 * The chance that a retry is refused locally (Google SRE book, "Handling Overload", client-side
 * throttling): `max(0, (requests − K·accepts) / (requests + 1))`. Zero while failures stay under
 * `1 − 1/K` of attempts; near one when nearly every attempt fails, so a storm costs the database
 * about one attempt per call instead of `maxAttempts`.
 *
 * @example
 * refusalChance({ requests: 100, accepts: 0 }, 2) // 0.990…
 */
export function refusalChance(counts: BudgetCounts, ratio: number): number {
  return Math.max(0, (counts.requests - ratio * counts.accepts) / (counts.requests + 1));
}

/** What an attempt's outcome tells the budget: the database `accepted` it, `failed` it, or says nothing. */
export type AttemptOutcome = "accepted" | "failed" | "neutral";

/**
 * Classifies an attempt's result (`undefined` = success). A failure a retry could fix (refused,
 * reset, too many connections, serialization failure, an unreachable coordinator: its retries load
 * it as well) or a lost connection is `failed`; an answer
 * from the database (success, a statement error) is `accepted`; what the database never saw or
 * never decided (an overload shed, an open circuit, a passed deadline, a lost lease) is `neutral`,
 * so an exhausted pool never throttles retries of a healthy database.
 *
 * @example
 * outcomeOf(Object.assign(new Error("x"), { code: "ECONNREFUSED" })) // "failed"
 */
export function outcomeOf(error: unknown): AttemptOutcome {
  if (error === undefined) return "accepted";
  if ((toDatabaseError(error).cause as { circuit?: unknown } | undefined)?.circuit === "open") return "neutral";
  if (isRetryable(error)) return "failed";
  const e = toDatabaseError(error);
  if (e.code === "DATABASE_UNAVAILABLE") return "failed";
  if (e.code === "DATABASE_ERROR") return "accepted";
  return "neutral";
}

/**
 * One isolate's retry budget for one pool: counts attempts and accepts over a sliding window of
 * buckets and, before a retry (never a first attempt), refuses it with {@link refusalChance}. Kept
 * at module scope like the circuit breaker, so it sees every request of the isolate. The clock and
 * the randomness are injected.
 *
 * @example
 * const budget = new RetryBudget("main", DEFAULT_RETRY_BUDGET, { now: Date.now, random: Math.random });
 * budget.record(error);
 * if (!budget.mayRetry()) throw error;
 */
export class RetryBudget {
  readonly name: string;
  readonly options: RetryBudgetOptions;
  readonly #rt: { now(): number; random(): number };
  // A ring of buckets; `#epochs[i]` says which bucket number (now / bucketMs) slot i counts for.
  readonly #requests: number[];
  readonly #accepts: number[];
  readonly #epochs: number[];
  #refused = 0;
  // The errors that ended a call because their retry was refused: its log line says so.
  readonly #refusedErrors = new WeakSet<object>();

  constructor(name: string, options: RetryBudgetOptions, runtime: { now(): number; random(): number }) {
    this.name = name;
    this.options = options;
    this.#rt = runtime;
    const n = Math.max(1, Math.ceil(options.windowMs / options.bucketMs));
    this.#requests = new Array<number>(n).fill(0);
    this.#accepts = new Array<number>(n).fill(0);
    this.#epochs = new Array<number>(n).fill(-1);
  }

  /** Records one attempt's result (`undefined` = success); see {@link outcomeOf}. */
  record(error: unknown): void {
    const outcome = outcomeOf(error);
    if (outcome === "neutral") return;
    const i = this.#slot();
    this.#requests[i]! += 1;
    if (outcome === "accepted") this.#accepts[i]! += 1;
  }

  /**
   * Asks to retry now. A refused retry counts as a request (the application asked for it), so a
   * storm that goes on is refused more surely, and is counted in {@link RetryBudget.refused}.
   * `error` is the failure that would be retried; see {@link RetryBudget.refusedRetryOf}.
   */
  mayRetry(error?: unknown): boolean {
    const counts = this.counts();
    const chance = counts.requests < this.options.minRequests ? 0 : refusalChance(counts, this.options.ratio);
    if (chance > 0 && this.#rt.random() < chance) {
      this.#requests[this.#slot()]! += 1;
      this.#refused++;
      if (typeof error === "object" && error !== null) this.#refusedErrors.add(error);
      return false;
    }
    return true;
  }

  /** Whether `error` ended its call because this budget refused to retry it. */
  refusedRetryOf(error: unknown): boolean {
    return typeof error === "object" && error !== null && this.#refusedErrors.has(error);
  }

  /** Retries refused since the isolate started. */
  get refused(): number {
    return this.#refused;
  }

  /** The window's counts now. */
  counts(): BudgetCounts {
    const current = Math.floor(this.#rt.now() / this.options.bucketMs);
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

  /** The budget as shown to operators: plain JSON. */
  toJSON(): { name: string; refused: number; refusalChance: number } & BudgetCounts {
    const counts = this.counts();
    return {
      name: this.name,
      ...counts,
      refused: this.#refused,
      refusalChance: refusalChance(counts, this.options.ratio),
    };
  }

  #slot(): number {
    const epoch = Math.floor(this.#rt.now() / this.options.bucketMs);
    const i = ((epoch % this.#epochs.length) + this.#epochs.length) % this.#epochs.length;
    if (this.#epochs[i] !== epoch) {
      this.#epochs[i] = epoch;
      this.#requests[i] = 0;
      this.#accepts[i] = 0;
    }
    return i;
  }
}
