/**
 * Lease tokens: a MAC over a lease's id, fence and expiry, with a key of the object's own, so a
 * restarted object can tell a lease it answered from one it never did — with no storage per lease.
 * HMAC-SHA256 truncated to 16 bytes (128 bits), base64url: 22 characters on every grant and renewal.
 * The message is the id's 16 bytes, the fence and the expiry (see `compact`), or their JSON.
 * Synchronous and in plain JavaScript (`./hmac.ts`): signing sits on the path of every grant and
 * renewal, which has no await, and `node:crypto` costs 6–12 µs a call in workerd.
 */
import type { LeaseGrant, VerifyRef } from "../src/core/index.ts";
import { HmacSha256 } from "./hmac.ts";

/** Bytes of a token: 128 bits, past any guessing within a lease's life. */
const TOKEN_BYTES = 16;
/** Bytes of a key. */
const KEY_BYTES = 32;
const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const utf8 = new TextEncoder();

/** base64url without padding. */
function base64url(bytes: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += B64URL[n >>> 18]! + B64URL[(n >>> 12) & 63]! + B64URL[(n >>> 6) & 63]! + B64URL[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += B64URL[n >>> 18]! + B64URL[(n >>> 12) & 63]!;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += B64URL[n >>> 18]! + B64URL[(n >>> 12) & 63]! + B64URL[(n >>> 6) & 63]!;
  }
  return out;
}

/** The bytes of `text` as UTF-8 (ASCII, the usual case, without a call into the runtime). */
function bytesOf(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f) return utf8.encode(text);
    out[i] = c;
  }
  return out;
}

/** The value of a lowercase hex digit, or -1. */
function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/**
 * The compact message of a lease the object could have granted — a canonical lowercase UUID id
 * (what `crypto.randomUUID()` makes), a fence and an expiry that are safe non-negative integers —
 * into `out` (33 bytes: a tag byte 1, the id's 16 bytes, the fence and the expiry as 64-bit
 * big-endian): one SHA-256 block instead of two. False for anything else (then the JSON form is
 * signed, whose first byte `[` differs from the tag, so the two forms never collide).
 */
function compact(id: string, fence: number, expiresAt: number, out: Uint8Array): boolean {
  if (id.length !== 36 || !Number.isSafeInteger(fence) || fence < 0) return false;
  if (!Number.isSafeInteger(expiresAt) || expiresAt < 0) return false;
  out[0] = 1;
  let n = 1;
  for (let i = 0; i < 36; ) {
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (id.charCodeAt(i) !== 0x2d) return false;
      i++;
      continue;
    }
    const hi = hexValue(id.charCodeAt(i));
    const lo = hexValue(id.charCodeAt(i + 1));
    if (hi < 0 || lo < 0) return false;
    out[n++] = (hi << 4) | lo;
    i += 2;
  }
  for (const v of [fence, expiresAt]) {
    const high = Math.floor(v / 2 ** 32);
    const low = v >>> 0;
    out[n] = high >>> 24;
    out[n + 1] = (high >>> 16) & 0xff;
    out[n + 2] = (high >>> 8) & 0xff;
    out[n + 3] = high & 0xff;
    out[n + 4] = low >>> 24;
    out[n + 5] = (low >>> 16) & 0xff;
    out[n + 6] = (low >>> 8) & 0xff;
    out[n + 7] = low & 0xff;
    n += 8;
  }
  return true;
}

/** `a === b` in time that does not depend on where they differ. */
function sameText(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * A new random key, base64url: written once to an object's storage when it first starts, and
 * never changed (a changed key would make every live lease unverifiable after a restart).
 *
 * @example
 * const key = newTokenKey();
 */
export function newTokenKey(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(KEY_BYTES)));
}

/** The key's bytes from its base64url form. */
function keyBytes(key: string): Uint8Array {
  if (key.length !== 43 || !/^[A-Za-z0-9_-]+$/.test(key)) {
    throw new Error("A lease token key must be 32 bytes in base64url (43 characters)");
  }
  const out = new Uint8Array(KEY_BYTES);
  let bits = 0;
  let value = 0;
  let n = 0;
  for (const ch of key) {
    value = (value << 6) | B64URL.indexOf(ch);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (value >>> bits) & 0xff;
    }
  }
  return out;
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
  readonly #mac: HmacSha256;
  readonly #compact = new Uint8Array(33);

  constructor(key: string) {
    this.#mac = new HmacSha256(keyBytes(key));
  }

  /**
   * The token of an id, fence and expiry: over their compact form when the object could have
   * granted them, else over their JSON (where the fields cannot run into each other, whatever an
   * id holds).
   */
  token(id: string, fence: number, expiresAt: number): string {
    const msg = compact(id, fence, expiresAt, this.#compact)
      ? this.#compact
      : bytesOf(JSON.stringify([id, fence, expiresAt]));
    return base64url(this.#mac.digest(msg, TOKEN_BYTES));
  }

  /** `lease` with the token of its id, fence and expiry. */
  signed(lease: LeaseGrant): LeaseGrant {
    return { ...lease, token: this.token(lease.id, lease.fence, lease.expiresAt) };
  }

  /** Whether `ref.token` is this object's token for `ref`'s id, fence and `expiresAt`. */
  readonly verify: VerifyRef = (ref) => {
    if (typeof ref.token !== "string" || typeof ref.expiresAt !== "number") return false;
    return sameText(ref.token, this.token(ref.leaseId, ref.fence, ref.expiresAt));
  };
}
