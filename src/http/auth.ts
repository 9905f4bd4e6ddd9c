import { HttpError, errorResponse } from "./respond.ts";

const encoder = new TextEncoder();

/**
 * Compares two strings in time that depends only on their digests' length, never on where they
 * first differ.
 *
 * @example
 * await constantTimeEqual(given, expected)
 */
export async function constantTimeEqual(a: string, b: string): Promise<boolean> {
  const [da, db] = await Promise.all([
    crypto.subtle.digest("SHA-256", encoder.encode(a)),
    crypto.subtle.digest("SHA-256", encoder.encode(b)),
  ]);
  const x = new Uint8Array(da);
  const y = new Uint8Array(db);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}

/**
 * What the operator endpoints answer (404 `NOT_FOUND`) while no `DEBUG_TOKEN` is set: they are
 * off, and this says how to turn them on.
 *
 * @example
 * if (!token) throw new HttpError("NOT_FOUND", OPERATOR_OFF);
 */
export const OPERATOR_OFF = "Operator endpoints are off until DEBUG_TOKEN is set";

// `Bearer <token>`; the scheme is case-insensitive (RFC 7235 §2.1), the token is not.
const BEARER = /^bearer (.*)$/i;

/**
 * Guards an operator endpoint: with no token configured the endpoint is off (404, {@link OPERATOR_OFF});
 * a missing or wrong bearer token answers 401. Returns null when the caller may pass.
 *
 * @example
 * const denied = await authorize(request, env.DEBUG_TOKEN); if (denied) return denied;
 */
export async function authorize(request: Request, token: string | undefined): Promise<Response | null> {
  if (!token) return errorResponse(new HttpError("NOT_FOUND", OPERATOR_OFF));
  const header = request.headers.get("authorization") ?? "";
  const given = BEARER.exec(header)?.[1] ?? "";
  if (given && (await constantTimeEqual(given, token))) return null;
  return errorResponse(
    new HttpError("UNAUTHORIZED", "A valid bearer token is required", {
      "www-authenticate": 'Bearer realm="leasegate"',
    }),
  );
}
