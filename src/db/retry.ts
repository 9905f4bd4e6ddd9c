import { isLeaseError } from "../core/index.ts";
import { CONNECTION_FAILURE_CODES, toDatabaseError } from "./errors.ts";

/** How a retry policy waits and gives up. All durations are milliseconds. */
export interface RetryOptions {
  /** Attempts in total, the first included: 1 = never retry. */
  readonly maxAttempts: number;
  /** Upper bound of the first backoff; doubles per attempt. */
  readonly baseDelayMs: number;
  /** Upper bound of any one backoff. */
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryOptions = { maxAttempts: 3, baseDelayMs: 50, maxDelayMs: 1000 };

/** What a retry loop needs from its runtime; injected so tests run on real time without fake timers. */
export interface RetryRuntime {
  /** The request's own deadline (epoch ms): no attempt starts and no wait ends past it. */
  readonly deadline: number;
  now(): number;
  /** A number in [0, 1). */
  random(): number;
  sleep(ms: number): Promise<void>;
}

/** What a retry loop asks before each retry and tells after each attempt (a retry budget). */
export interface RetryGate {
  /** One attempt ended: `undefined` when it succeeded, else its error. */
  record(error: unknown): void;
  /** Whether a retry of `error` may start now; false ends the call with that error. */
  mayRetry(error: unknown): boolean;
}

// Failures whose transaction the server rolled back whole: rerunning it is the documented remedy,
// even where the failed attempt's statements had run (`executed: "maybe"`).
const ROLLED_BACK = new Set(["40001", "40P01"]);

/** SQLSTATEs and driver codes after which the same statement may succeed on a fresh attempt. */
const RETRYABLE_CODES = new Set([
  ...CONNECTION_FAILURE_CODES,
  "40001", // serialization_failure: the transaction was rolled back
  "40P01", // deadlock_detected: the transaction was rolled back
  "COORDINATOR_UNAVAILABLE",
]);

/** Codes after which the database layer never runs the work again, whatever their causes say. */
const FINAL_LEASE_CODES: ReadonlySet<string> = new Set([
  "QUEUE_FULL",
  "ACQUIRE_TIMEOUT",
  "INVALID_CONFIG",
  "DEADLINE_EXCEEDED",
  "LEASE_LOST",
]);

/**
 * True when `error` (or one of its causes) is a failure that a fresh attempt may not repeat:
 * refused/reset/timed-out connections, too many connections, terminated backends, serialization
 * failures and deadlocks, an unreachable coordinator, a Durable Object error marked `retryable`.
 * Never for syntax, constraint or permission errors, overload sheds (`QUEUE_FULL`,
 * `ACQUIRE_TIMEOUT`: retrying would add to the load they shed), an open circuit, a passed deadline
 * (`DEADLINE_EXCEEDED`: no time is left) or a lost lease (`LEASE_LOST`: the statement may have run,
 * and only the caller knows whether running it twice is safe). Never, either, for a failure whose
 * `executed` is `"maybe"` or `"yes"` (a connection lost mid-statement): the statement may have run,
 * and the database layer cannot know that it is idempotent — except a serialization failure or a
 * deadlock, which rolled the transaction back, or when the caller says the work is `idempotent`.
 *
 * @example
 * isRetryable(Object.assign(new Error("x"), { code: "40001" })) // true
 */
export function isRetryable(error: unknown, idempotent = false): boolean {
  if (!idempotent && mayHaveRun(error) && !rolledBack(error)) return false;
  let current: unknown = error;
  // Bounded walk: a cause chain may be circular.
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    const e = current as {
      code?: unknown;
      retryable?: unknown;
      overloaded?: unknown;
      circuit?: unknown;
      cause?: unknown;
    };
    if (e.circuit === "open") return false;
    if (isLeaseError(current) && FINAL_LEASE_CODES.has(current.code)) return false;
    const code = typeof e.code === "string" ? e.code : "";
    if (RETRYABLE_CODES.has(code) || /^08/.test(code)) return true;
    // Durable Object errors carry `retryable`; an overloaded object must not get more calls.
    if (e.retryable === true && e.overloaded !== true && !isLeaseError(current)) return true;
    current = e.cause;
  }
  // Runtimes that report a failed connect without a code (workerd's sockets, a WebSocket's error
  // event) are recognized by the same rule that answers them with DATABASE_UNAVAILABLE (also once
  // the database layer has wrapped them in that code).
  const root = isLeaseError(error) && error.code === "DATABASE_UNAVAILABLE" ? error.cause : error;
  return !isLeaseError(root) && toDatabaseError(root).code === "DATABASE_UNAVAILABLE";
}

// Walks a cause chain (bounded: it may be circular), true when `test` holds for a link.
function someCause(error: unknown, test: (link: { code?: unknown; executed?: unknown }) => boolean): boolean {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    if (test(current as { code?: unknown })) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

// A lease error on the chain says the statement may have run (a driver's own error never says).
function mayHaveRun(error: unknown): boolean {
  return someCause(error, (e) => isLeaseError(e) && (e.executed === "maybe" || e.executed === "yes"));
}

function rolledBack(error: unknown): boolean {
  return someCause(error, (e) => typeof e.code === "string" && ROLLED_BACK.has(e.code));
}

/**
 * The wait before attempt `attempt + 1` (attempt counts from 1): "full jitter", a uniform draw
 * from [0, min(maxDelayMs, baseDelayMs · 2^(attempt-1))), so retrying callers spread out instead of
 * arriving together.
 *
 * @example
 * backoffMs(3, DEFAULT_RETRY, 0.5) // 100: half of min(1000, 50·4)
 */
export function backoffMs(attempt: number, options: RetryOptions, random: number): number {
  const cap = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(cap * Math.min(Math.max(random, 0), 1));
}

/**
 * Runs `fn` until it succeeds, fails with a non-retryable error, runs out of attempts, the next
 * wait would end past the deadline, or `gate` refuses the retry; then throws the last error. `fn`
 * receives the attempt number; `gate` hears every attempt's outcome.
 *
 * @example
 * await retry((n) => db.query("select 1"), DEFAULT_RETRY, {
 *   deadline: Date.now() + 5000, now: Date.now, random: Math.random, sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
 * });
 */
export async function retry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryOptions,
  runtime: RetryRuntime,
  retryable: (error: unknown) => boolean = isRetryable,
  gate?: RetryGate,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    let result: T;
    try {
      result = await fn(attempt);
    } catch (error) {
      gate?.record(error);
      if (attempt >= options.maxAttempts || !retryable(error)) throw error;
      const delay = backoffMs(attempt, options, runtime.random());
      // Never past the request's deadline: an answer after it is no use to the caller.
      if (runtime.now() + delay >= runtime.deadline) throw error;
      // Asked last, so only a retry that would really start is counted as refused.
      if (gate && !gate.mayRetry(error)) throw error;
      await runtime.sleep(delay);
      continue;
    }
    gate?.record(undefined);
    return result;
  }
}
