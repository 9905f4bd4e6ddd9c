/**
 * Lease tokens: a MAC over a lease's id, fence and expiry, with a key of the object's own, so a
 * restarted object can tell a lease it answered from one it never did — with no storage per lease.
 * HMAC-SHA256 truncated to 16 bytes (128 bits), base64url: 22 characters on every grant and renewal.
 * Synchronous (`node:crypto`, which the Worker has with `nodejs_compat`): signing sits on the path
 * of every grant and renewal, and that path has no await.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import type { LeaseGrant, VerifyRef } from "../src/core/index.ts";

/** Bytes of a token: 128 bits, past any guessing within a lease's life. */
const TOKEN_BYTES = 16;
/** Bytes of a key. */
const KEY_BYTES = 32;

/**
 * A new random key, base64url: written once to an object's storage when it first starts, and
 * never changed (a changed key would make every live lease unverifiable after a restart).
 *
 * @example
 * const key = newTokenKey();
 */
export function newTokenKey(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(KEY_BYTES))).toString("base64url");
}

/**
 * Signs and checks the tokens of one object.
 *
 * @example
 * const tokens = new LeaseTokens(store.tokenKey());
 * const grant = tokens.signed(lease); // { ...lease, token }
 * tokens.verify(leaseRef(grant)) // true
 */
export class LeaseTokens {
  readonly #key: Buffer;

  constructor(key: string) {
    this.#key = Buffer.from(key, "base64url");
    if (this.#key.length !== KEY_BYTES) throw new Error("A lease token key must be 32 bytes (base64url)");
  }

  #mac(id: string, fence: number, expiresAt: number): Buffer {
    // JSON: the fields cannot run into each other, whatever an id holds.
    return createHmac("sha256", this.#key)
      .update(JSON.stringify([id, fence, expiresAt]))
      .digest()
      .subarray(0, TOKEN_BYTES);
  }

  /** `lease` with the token of its id, fence and expiry. */
  signed(lease: LeaseGrant): LeaseGrant {
    return { ...lease, token: this.#mac(lease.id, lease.fence, lease.expiresAt).toString("base64url") };
  }

  /** Whether `ref.token` is this object's token for `ref`'s id, fence and `expiresAt`. */
  readonly verify: VerifyRef = (ref) => {
    if (typeof ref.token !== "string" || typeof ref.expiresAt !== "number") return false;
    const given = Buffer.from(ref.token, "base64url");
    if (given.length !== TOKEN_BYTES) return false;
    return timingSafeEqual(given, this.#mac(ref.leaseId, ref.fence, ref.expiresAt));
  };
}
