/**
 * Stable error codes of the coordinator and the database layer. Callers branch on `code`, never on
 * message text; docs/errors.md has a heading per code saying what it means and what to do. (HTTP
 * answers add their own codes: `HttpErrorCodes` in `leasegate/http`.)
 */
export const ErrorCodes = [
  "QUEUE_FULL",
  "ACQUIRE_TIMEOUT",
  "LEASE_EXPIRED",
  "LEASE_NOT_FOUND",
  "STALE_FENCE",
  "INVALID_ARGUMENT",
  "INVALID_CONFIG",
  "COORDINATOR_UNAVAILABLE",
  "DATABASE_UNAVAILABLE",
  "DATABASE_ERROR",
  "NESTED_LEASE",
  "LEASE_LOST",
  "DEADLINE_EXCEEDED",
  "INTERNAL",
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

/** Codes after which the same call may succeed later; everything else is the caller's bug or final. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "QUEUE_FULL",
  "ACQUIRE_TIMEOUT",
  "COORDINATOR_UNAVAILABLE",
  "DATABASE_UNAVAILABLE",
  "LEASE_LOST",
  "DEADLINE_EXCEEDED",
]);

/**
 * Whether the statement of a failed call may have run on the database: `"no"` (it never started:
 * no slot, no connection), `"maybe"` (it was sent and then cut off: cancelled, connection lost, no
 * answer in time — it may have committed), `"yes"` (it ran and the failure came after). A retry of
 * a write is safe only after `"no"`, or when the write is idempotent.
 */
export type Executed = "no" | "maybe" | "yes";

const BRAND = "leasegate.LeaseError";

/**
 * The one error class of leasegate. It carries a brand field rather than relying on `instanceof`,
 * so the type guard still works when two copies of the package are loaded, or after RPC.
 *
 * @example
 * try { await leases.withLease(run) } catch (e) {
 *   if (isLeaseError(e) && e.code === "QUEUE_FULL") return retryLater(e.retryAfterMs);
 *   throw e;
 * }
 */
export class LeaseError extends Error {
  readonly brand = BRAND;
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** A hint for when a retry may succeed, in milliseconds; set for overload codes. */
  readonly retryAfterMs: number | undefined;
  /** Whether the statement may have run (see {@link Executed}); undefined where no statement was involved. */
  readonly executed: Executed | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { retryAfterMs?: number | undefined; cause?: unknown; executed?: Executed | undefined } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "LeaseError";
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    this.retryAfterMs = options.retryAfterMs;
    this.executed = options.executed;
  }
}

/**
 * True for a {@link LeaseError}, from any copy of this package.
 *
 * @example
 * if (isLeaseError(e)) return e.code;
 */
export function isLeaseError(value: unknown): value is LeaseError {
  return typeof value === "object" && value !== null && (value as { brand?: unknown }).brand === BRAND;
}

/**
 * True when `code` names a failure after which trying again may succeed.
 *
 * @example
 * isRetryableCode("QUEUE_FULL") // true
 */
export function isRetryableCode(code: ErrorCode): boolean {
  return RETRYABLE.has(code);
}

/**
 * Describes a value for an argument error: ``Expected `limit` to be a positive integer, got `-1` (number)``.
 *
 * @example
 * expected("limit", "a positive integer", -1)
 */
export function expected(name: string, what: string, got: unknown): string {
  let shown: string;
  try {
    shown = typeof got === "string" ? JSON.stringify(got.length > 40 ? `${got.slice(0, 40)}…` : got) : String(got);
  } catch {
    shown = "?";
  }
  if (shown.length > 60) shown = `${shown.slice(0, 60)}…`;
  const kind = got === null ? "null" : Array.isArray(got) ? "array" : typeof got;
  return `Expected \`${name}\` to be ${what}, got \`${shown}\` (${kind})`;
}
