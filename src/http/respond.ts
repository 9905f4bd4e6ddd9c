/**
 * HTTP answers for leasegate's errors: one JSON shape, `{"error": {"code", "message"}}`, a status
 * per code, and `Retry-After` on overload — the same from the operator handler, the Hono
 * middleware and an app's own routes.
 */
import { type ErrorCode, LeaseError, expected, isLeaseError } from "../core/index.ts";
import { toDatabaseError } from "../db/errors.ts";

/** Codes only HTTP answers use: the request itself was wrong for the route. */
export const HttpErrorCodes = ["NOT_FOUND", "UNAUTHORIZED", "METHOD_NOT_ALLOWED", "PAYLOAD_TOO_LARGE"] as const;
export type HttpErrorCode = (typeof HttpErrorCodes)[number];

const STATUS: Record<ErrorCode | HttpErrorCode, number> = {
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
  NESTED_LEASE: 500,
  LEASE_LOST: 503,
  DEADLINE_EXCEEDED: 504,
  INTERNAL: 500,
  NOT_FOUND: 404,
  UNAUTHORIZED: 401,
  METHOD_NOT_ALLOWED: 405,
  PAYLOAD_TOO_LARGE: 413,
};

const BRAND = "leasegate.HttpError";

/**
 * A request that does not fit its route (unknown path, wrong method, no token, body too large).
 * `headers` go on its response (`Allow` for a 405, `WWW-Authenticate` for a 401).
 *
 * @example
 * throw new HttpError("NOT_FOUND", "No such pitch");
 */
export class HttpError extends Error {
  readonly brand = BRAND;
  readonly code: HttpErrorCode;
  readonly headers: Readonly<Record<string, string>>;

  constructor(code: HttpErrorCode, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = "HttpError";
    this.code = code;
    this.headers = headers;
  }
}

function isHttpError(value: unknown): value is HttpError {
  return typeof value === "object" && value !== null && (value as { brand?: unknown }).brand === BRAND;
}

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
 * `Retry-After` (whole seconds, at least 1) with `retryAfterMs` for the overload codes. Unknown
 * errors answer `INTERNAL` without their text, which may hold secrets.
 *
 * @example
 * catch (e) { return errorResponse(e) }
 */
export function errorResponse(error: unknown): Response {
  if (isHttpError(error))
    return json({ error: { code: error.code, message: error.message } }, STATUS[error.code], { ...error.headers });
  const e = isLeaseError(error) ? error : knownFailure(error);
  const status = STATUS[e.code] ?? 500;
  const headers: Record<string, string> = {};
  const body: { code: ErrorCode; message: string; retryAfterMs?: number } = { code: e.code, message: e.message };
  if (status === 503) {
    const ms = e.retryAfterMs ?? 1000;
    headers["retry-after"] = String(Math.max(1, Math.ceil(ms / 1000)));
    body.retryAfterMs = ms;
  }
  return json({ error: body }, status, headers);
}

/**
 * A driver's failure as its `LeaseError` (`DATABASE_UNAVAILABLE` / `DATABASE_ERROR`); anything
 * else a handler threw (a bug, an app's own error without a code) is `INTERNAL`.
 */
function knownFailure(error: unknown): LeaseError {
  const e = toDatabaseError(error);
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  if (e.code === "DATABASE_ERROR" && (typeof code !== "string" || code === "")) {
    return new LeaseError("INTERNAL", "The request failed", { cause: error });
  }
  return e;
}

/**
 * Passes when the request's method is one of `allowed`; otherwise throws `METHOD_NOT_ALLOWED`,
 * whose response carries them in `Allow`, as every 405 must (RFC 9110 §15.5.6).
 *
 * @example
 * allowMethods(request, "GET");
 */
export function allowMethods(request: Request, ...allowed: string[]): void {
  if (!allowed.includes(request.method)) {
    throw new HttpError("METHOD_NOT_ALLOWED", `Use ${allowed.join(" or ")}`, { allow: allowed.join(", ") });
  }
}

const MAX_BODY_BYTES = 16 * 1024;

/**
 * The request's body as a JSON object of at most 16 KiB; `PAYLOAD_TOO_LARGE` or
 * `INVALID_ARGUMENT` otherwise.
 *
 * @example
 * const { limit } = await readJson(request);
 */
export async function readJson(request: Request): Promise<Record<string, unknown>> {
  const tooLarge = () => new HttpError("PAYLOAD_TOO_LARGE", `Body exceeds ${MAX_BODY_BYTES} bytes`);
  if (Number(request.headers.get("content-length") ?? "0") > MAX_BODY_BYTES) throw tooLarge();
  const text = await request.text();
  if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) throw tooLarge();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new LeaseError("INVALID_ARGUMENT", "Body is not valid JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new LeaseError("INVALID_ARGUMENT", expected("body", "a JSON object", body));
  return body as Record<string, unknown>;
}
