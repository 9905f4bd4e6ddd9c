import { toDatabaseError } from "./errors.ts";
import { AcceptWindow, type BudgetCounts, refusalChance } from "../core/throttle.ts";
import { isRetryable } from "./retry.ts";

export { type BudgetCounts, refusalChance } from "../core/throttle.ts";

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
  readonly #window: AcceptWindow;
  #refused = 0;
  // The errors that ended a call because their retry was refused: its log line says so.
  readonly #refusedErrors = new WeakSet<object>();

  constructor(name: string, options: RetryBudgetOptions, runtime: { now(): number; random(): number }) {
    this.name = name;
    this.options = options;
    this.#rt = runtime;
    this.#window = new AcceptWindow(options.windowMs, options.bucketMs);
  }

  /** Records one attempt's result (`undefined` = success); see {@link outcomeOf}. */
  record(error: unknown): void {
    const outcome = outcomeOf(error);
    if (outcome === "neutral") return;
    const now = this.#rt.now();
    this.#window.request(now);
    if (outcome === "accepted") this.#window.accept(now);
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
      this.#window.request(this.#rt.now());
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
    return this.#window.counts(this.#rt.now());
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
}
