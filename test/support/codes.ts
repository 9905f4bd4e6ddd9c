import { isLeaseError } from "../../src/core/index.ts";

/**
 * The stable code a promise fails with: tests assert on codes, never on message text.
 * "no error" when it resolves; a description when it fails with something else.
 */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "no error";
  } catch (e) {
    return isLeaseError(e) ? e.code : `not a LeaseError: ${String(e)}`;
  }
}
