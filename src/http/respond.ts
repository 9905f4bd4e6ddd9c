import { type ErrorCode, LeaseError, isLeaseError } from "../core/index.ts";
import { toDatabaseError } from "../db/errors.ts";

const STATUS: Record<ErrorCode, number> = {
  QUEUE_FULL: 503,
  ACQUIRE_TIMEOUT: 503,
  COORDINATOR_UNAVAILABLE: 503,
  DATABASE_UNAVAILABLE: 503,
  LEASE_EXPIRED: 409,
  LEASE_NOT_FOUND: 404,
  STALE_FENCE: 409,
  INVALID_ARGUMENT: 400,
  INVALID_CONFIG: 500,
  DATABASE_ERROR: 500,
  NOT_FOUND: 404,
  UNAUTHORIZED: 401,
  METHOD_NOT_ALLOWED: 405,
  PAYLOAD_TOO_LARGE: 413,
  INTERNAL: 500,
};

/**
 * A JSON response.
 *
 * @example
 * return json({ status: "ok" });
 */
export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...headers },
  });
}

/**
 * The response for any failure: `{"error": {"code", "message"}}`, the code's status, and
 * `Retry-After` (whole seconds, at least 1) for the overload codes. Unknown errors answer
 * `INTERNAL` without their text, which may hold secrets.
 *
 * @example
 * catch (e) { return errorResponse(e) }
 */
export function errorResponse(error: unknown): Response {
  const e = isLeaseError(error) ? error : toDatabaseError(error);
  const status = STATUS[e.code] ?? 500;
  const headers: Record<string, string> = {};
  const body: { code: ErrorCode; message: string; retryAfterMs?: number } = { code: e.code, message: e.message };
  if (e instanceof MethodNotAllowed) headers.allow = e.allow;
  if (status === 503) {
    const ms = e.retryAfterMs ?? 1000;
    headers["retry-after"] = String(Math.max(1, Math.ceil(ms / 1000)));
    body.retryAfterMs = ms;
  }
  return json({ error: body }, status, headers);
}

/**
 * `METHOD_NOT_ALLOWED` with the methods the resource does allow: its response carries them in
 * `Allow`, as every 405 must (RFC 9110 §15.5.6).
 *
 * @example
 * throw new MethodNotAllowed(["GET"]); // 405, Allow: GET
 */
export class MethodNotAllowed extends LeaseError {
  /** The `Allow` header's value, e.g. `GET` or `GET, POST`. */
  readonly allow: string;

  constructor(allowed: readonly string[]) {
    super("METHOD_NOT_ALLOWED", `Use ${allowed.join(" or ")}`);
    this.allow = allowed.join(", ");
  }
}

/**
 * Passes when the request's method is one of `allowed`; otherwise throws {@link MethodNotAllowed}.
 *
 * @example
 * allowMethods(request, "GET");
 */
export function allowMethods(request: Request, ...allowed: string[]): void {
  if (!allowed.includes(request.method)) throw new MethodNotAllowed(allowed);
}

/** Shorthand for a `LeaseError` to throw from a handler. */
export function fail(code: ErrorCode, message: string): never {
  throw new LeaseError(code, message);
}
