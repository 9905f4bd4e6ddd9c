import { errorResponse } from "./respond.ts";
import { LeaseError } from "../core/index.ts";

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
 * Guards an operator endpoint: with no token configured the endpoint does not exist (404); a
 * missing or wrong bearer token answers 401. Returns null when the caller may pass.
 *
 * @example
 * const denied = await authorize(request, env.DEBUG_TOKEN); if (denied) return denied;
 */
export async function authorize(request: Request, token: string | undefined): Promise<Response | null> {
  if (!token) return errorResponse(new LeaseError("NOT_FOUND", "No such endpoint"));
  const header = request.headers.get("authorization") ?? "";
  const given = header.startsWith("Bearer ") ? header.slice(7) : "";
  if (given && (await constantTimeEqual(given, token))) return null;
  const denied = errorResponse(new LeaseError("UNAUTHORIZED", "A valid bearer token is required"));
  denied.headers.set("www-authenticate", 'Bearer realm="leasegate"');
  return denied;
}
