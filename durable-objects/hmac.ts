/**
 * HMAC-SHA256 (RFC 2104 over FIPS 180-4 SHA-256) for short messages, synchronous and in plain
 * JavaScript, with the key's inner and outer pads hashed once per key. Why not `node:crypto`: in
 * workerd every `createHmac` (even every `createHash`) crosses into the runtime and costs 6–12 µs,
 * several times what deciding a grant costs, on a path that signs every grant and renewal; this
 * costs about a microsecond. It is checked against `node:crypto`'s HMAC over random keys and
 * messages of every length across the block boundaries (`test/security/hmac.test.ts`).
 */

/** SHA-256 round constants (the first 32 bits of the fractional parts of the cube roots of the first 64 primes). */
const K = Int32Array.of(
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
);
/** SHA-256 initial hash value. */
const IV = Int32Array.of(
  0x6a09e667,
  0xbb67ae85,
  0x3c6ef372,
  0xa54ff53a,
  0x510e527f,
  0x9b05688c,
  0x1f83d9ab,
  0x5be0cd19,
);
const BLOCK = 64;

/** Folds the 64-byte block at `bytes[off…]` into `h` (eight 32-bit words); `w` is scratch. */
function compress(h: Int32Array, bytes: Uint8Array, off: number, w: Int32Array): void {
  for (let i = 0; i < 16; i++) {
    const j = off + i * 4;
    w[i] = (bytes[j]! << 24) | (bytes[j + 1]! << 16) | (bytes[j + 2]! << 8) | bytes[j + 3]!;
  }
  for (let i = 16; i < 64; i++) {
    const x = w[i - 15]!;
    const y = w[i - 2]!;
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) | 0;
  }
  let a = h[0]!;
  let b = h[1]!;
  let c = h[2]!;
  let d = h[3]!;
  let e = h[4]!;
  let f = h[5]!;
  let g = h[6]!;
  let k = h[7]!;
  for (let i = 0; i < 64; i++) {
    const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (k + s1 + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
    const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    k = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  h[0] = (h[0]! + a) | 0;
  h[1] = (h[1]! + b) | 0;
  h[2] = (h[2]! + c) | 0;
  h[3] = (h[3]! + d) | 0;
  h[4] = (h[4]! + e) | 0;
  h[5] = (h[5]! + f) | 0;
  h[6] = (h[6]! + g) | 0;
  h[7] = (h[7]! + k) | 0;
}

/**
 * Continues a hash whose state `h` has absorbed `before` bytes (whole blocks) with `msg[0…len)`,
 * pads, and leaves the digest's words in `h`. `msg` must have room for the padding (len + 72).
 */
function finish(h: Int32Array, before: number, msg: Uint8Array, len: number, w: Int32Array): void {
  const total = len + 9;
  const end = total + ((BLOCK - (total % BLOCK)) % BLOCK);
  msg[len] = 0x80;
  msg.fill(0, len + 1, end - 8);
  // The length in bits, big-endian, in the last 8 bytes (the high word is 0 for any message here).
  const bits = (before + len) * 8;
  msg[end - 8] = 0;
  msg[end - 7] = 0;
  msg[end - 6] = 0;
  msg[end - 5] = Math.floor(bits / 2 ** 32) & 0xff;
  msg[end - 4] = (bits >>> 24) & 0xff;
  msg[end - 3] = (bits >>> 16) & 0xff;
  msg[end - 2] = (bits >>> 8) & 0xff;
  msg[end - 1] = bits & 0xff;
  for (let off = 0; off < end; off += BLOCK) compress(h, msg, off, w);
}

/**
 * An HMAC-SHA256 key, ready to sign: its pads are hashed once here.
 *
 * @example
 * const mac = new HmacSha256(key); const digest = mac.digest(new TextEncoder().encode("message"));
 */
export class HmacSha256 {
  readonly #inner = new Int32Array(8);
  readonly #outer = new Int32Array(8);
  readonly #h = new Int32Array(8);
  readonly #w = new Int32Array(64);
  #buf = new Uint8Array(256);

  constructor(key: Uint8Array) {
    if (key.length > BLOCK) throw new Error("An HMAC key of more than 64 bytes must be hashed first");
    const pad = new Uint8Array(BLOCK);
    for (const [state, byte] of [
      [this.#inner, 0x36],
      [this.#outer, 0x5c],
    ] as const) {
      pad.fill(byte);
      for (let i = 0; i < key.length; i++) pad[i] = key[i]! ^ byte;
      state.set(IV);
      compress(state, pad, 0, this.#w);
    }
  }

  /** The first `bytes` bytes (at most 32) of HMAC-SHA256(key, msg). */
  digest(msg: Uint8Array, bytes = 32): Uint8Array {
    if (this.#buf.length < msg.length + 72) this.#buf = new Uint8Array(msg.length + 72);
    const buf = this.#buf;
    const h = this.#h;
    buf.set(msg);
    h.set(this.#inner);
    finish(h, BLOCK, buf, msg.length, this.#w);
    // The outer hash over the inner digest.
    for (let i = 0; i < 8; i++) {
      const v = h[i]!;
      buf[i * 4] = v >>> 24;
      buf[i * 4 + 1] = (v >>> 16) & 0xff;
      buf[i * 4 + 2] = (v >>> 8) & 0xff;
      buf[i * 4 + 3] = v & 0xff;
    }
    h.set(this.#outer);
    finish(h, BLOCK, buf, 32, this.#w);
    const out = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i++) out[i] = (h[i >> 2]! >>> (24 - 8 * (i & 3))) & 0xff;
    return out;
  }
}
