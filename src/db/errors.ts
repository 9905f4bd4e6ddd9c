import { type Executed, LeaseError, isLeaseError } from "../core/index.ts";

/**
 * The connection itself failed or the server turned it away (socket errors, postgres.js's own
 * codes, too many connections, a backend shut down): a fresh attempt may succeed.
 */
export const CONNECTION_FAILURE_CODES: readonly string[] = [
  "53300", // too_many_connections
  "57P01", // admin_shutdown: the backend was terminated
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now: starting up or shutting down
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
];

/** SQLSTATEs and driver codes after which the database, not the query, is the problem. */
const UNAVAILABLE = new Set([
  ...CONNECTION_FAILURE_CODES,
  "53400", // configuration_limit_exceeded
]);

/**
 * Turns whatever a driver threw into a `LeaseError`: `DATABASE_UNAVAILABLE` (retryable: refused,
 * reset, timeouts, too many connections, shutdown) or `DATABASE_ERROR`. The message never carries
 * the driver's text, which may quote a connection string or query parameters. `executed` says
 * whether the statement may have run, where the caller knows (a `LeaseError` passes unchanged).
 *
 * @example
 * catch (e) { throw toDatabaseError(e, "no") }
 */
export function toDatabaseError(error: unknown, executed?: Executed): LeaseError {
  if (isLeaseError(error)) return error;
  const code = typeof error === "object" && error !== null ? String((error as { code?: unknown }).code ?? "") : "";
  if (UNAVAILABLE.has(code) || code.startsWith("08")) {
    return new LeaseError("DATABASE_UNAVAILABLE", `The database is unavailable (${code})`, {
      cause: error,
      retryAfterMs: 1000,
      executed,
    });
  }
  const message = String((error as { message?: unknown })?.message ?? "");
  if (/connect|closed|network|socket|stream/i.test(message) && code === "") {
    return new LeaseError("DATABASE_UNAVAILABLE", "The database connection failed", {
      cause: error,
      retryAfterMs: 1000,
      executed,
    });
  }
  return new LeaseError("DATABASE_ERROR", code ? `The query failed (SQLSTATE ${code})` : "The query failed", {
    cause: error,
    executed,
  });
}

/**
 * The SQLSTATE of an error the server sent (five characters), or undefined for anything else.
 *
 * @example
 * sqlState(Object.assign(new Error("x"), { code: "57014" })) // "57014"
 */
export function sqlState(error: unknown): string | undefined {
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}
