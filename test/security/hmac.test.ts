import { createHmac, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { HmacSha256 } from "../../durable-objects/hmac.ts";
import { LeaseTokens, newTokenKey } from "../../durable-objects/tokens.ts";

/**
 * The lease tokens' HMAC-SHA256 is plain JavaScript (node:crypto costs 6–12 µs a call in workerd):
 * it must equal node:crypto's HMAC exactly, for any key and message, across every block boundary.
 */
describe("HMAC-SHA256 of the lease tokens", () => {
  it("equals node:crypto's HMAC for random keys and messages of 0 to 300 bytes", () => {
    for (let len = 0; len <= 300; len++) {
      for (const keyLen of [1, 16, 32, 64]) {
        const key = randomBytes(keyLen);
        const msg = randomBytes(len);
        const expected = createHmac("sha256", key).update(msg).digest();
        expect(Buffer.from(new HmacSha256(key).digest(msg))).toEqual(expected);
      }
    }
  });

  it("equals node:crypto on RFC 4231 test case 2, and one key signs many messages in a row", () => {
    const mac = new HmacSha256(new TextEncoder().encode("Jefe"));
    const msg = new TextEncoder().encode("what do ya want for nothing?");
    expect(Buffer.from(mac.digest(msg)).toString("hex")).toBe(
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    );
    const key = randomBytes(32);
    const many = new HmacSha256(key);
    for (let i = 0; i < 500; i++) {
      const m = randomBytes(i % 150);
      expect(Buffer.from(many.digest(m, 16))).toEqual(createHmac("sha256", key).update(m).digest().subarray(0, 16));
    }
  });

  it("tokens: 22 base64url characters of the first 16 bytes, over the compact form or the JSON; verify takes only its own", () => {
    const key = newTokenKey();
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const tokens = new LeaseTokens(key);
    const mac = (msg: Buffer | string) =>
      createHmac("sha256", Buffer.from(key, "base64url")).update(msg).digest().subarray(0, 16).toString("base64url");
    const uuid = "3f2a9c1b-aaaa-4bbb-8ccc-1234567890ab";
    // A lease the object could have granted: tag 1, the id's 16 bytes, fence and expiry as 64-bit big-endian.
    const compact = Buffer.alloc(33);
    compact[0] = 1;
    Buffer.from(uuid.replaceAll("-", ""), "hex").copy(compact, 1);
    compact.writeBigUInt64BE(7n, 17);
    compact.writeBigUInt64BE(1_796_618_796_675n, 25);
    expect(tokens.token(uuid, 7, 1_796_618_796_675)).toBe(mac(compact));
    // Anything else: its JSON (an uppercase UUID is another id, so it must not share the compact form).
    for (const [id, expiresAt] of [
      [uuid.toUpperCase(), 1_796_618_796_675],
      ["ünïcødé-id", 1_796_618_796_675],
      ["x".repeat(128), 1_796_618_796_675],
      [uuid, 1_796_618_796_675.5],
    ] as const) {
      expect(tokens.token(id, 7, expiresAt)).toBe(mac(JSON.stringify([id, 7, expiresAt])));
    }
    for (const id of [uuid, "ünïcødé-id"]) {
      const ref = {
        leaseId: id,
        fence: 7,
        expiresAt: 1_796_618_796_675,
        token: tokens.token(id, 7, 1_796_618_796_675),
      };
      expect(tokens.token(id, 7, 1_796_618_796_675)).toMatch(/^[A-Za-z0-9_-]{22}$/);
      expect(tokens.verify(ref)).toBe(true);
      expect(tokens.verify({ ...ref, expiresAt: ref.expiresAt + 1 })).toBe(false);
      expect(tokens.verify({ ...ref, fence: 8 })).toBe(false);
      expect(tokens.verify({ ...ref, leaseId: id.toUpperCase() })).toBe(false);
      expect(tokens.verify({ ...ref, token: undefined })).toBe(false);
      expect(new LeaseTokens(newTokenKey()).verify(ref)).toBe(false);
    }
    expect(() => new LeaseTokens("short")).toThrow("32 bytes");
  });
});
