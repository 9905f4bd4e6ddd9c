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
  "INTERNAL",
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

/** Codes after which the same call may succeed later; everything else is the caller's bug or final. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "QUEUE_FULL",
  "ACQUIRE_TIMEOUT",
  "COORDINATOR_UNAVAILABLE",
  "DATABASE_UNAVAILABLE",
]);

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

  constructor(code: ErrorCode, message: string, options: { retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "LeaseError";
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    this.retryAfterMs = options.retryAfterMs;
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
