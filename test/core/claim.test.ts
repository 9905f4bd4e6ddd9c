import { describe, expect, it } from "vitest";
import { type PoolConfig, acquire, createPool, isLeaseError, release, renew, tick } from "../../src/core/index.ts";

const config: PoolConfig = { limit: 1, maxQueue: 5, waitMs: 5000, leaseTtlMs: 2000 };

/** A grant from the queue lives `claimMs` until its caller claims it (renews); a grant at once lives its TTL. */
describe("claim window of grants from the queue", () => {
  it("a grant at once ignores claimMs; a queued one lives claimMs, then its full TTL once renewed", () => {
    const p = createPool(config);
    const now = 1000;
    const first = acquire(p, { leaseId: "a", holder: "a", claimMs: 500 }, now);
    expect(first.outcome).toMatchObject({ status: "granted", lease: { expiresAt: now + 2000 } });
    expect(acquire(p, { leaseId: "b", holder: "b", claimMs: 500 }, now).outcome.status).toBe("queued");
    const { effects } = release(p, { leaseId: "a", fence: 1 }, now + 100);
    expect(effects.granted).toMatchObject([{ id: "b", grantedAt: now + 100, expiresAt: now + 600 }]);
    const claimed = renew(p, { leaseId: "b", fence: 2 }, now + 150);
    expect(claimed.outcome).toMatchObject({ status: "ok", lease: { expiresAt: now + 2150 } });
  });

  it("a queued grant nobody claims is reaped at the claim window, and the next waiter gets the slot", () => {
    const p = createPool(config);
    acquire(p, { leaseId: "a", holder: "a" }, 0);
    acquire(p, { leaseId: "gone", holder: "gone", claimMs: 500 }, 0);
    acquire(p, { leaseId: "next", holder: "next", claimMs: 500 }, 0);
    release(p, { leaseId: "a", fence: 1 }, 10);
    expect(tick(p, 509).expired).toEqual([]);
    const fx = tick(p, 510);
    expect(fx.expired.map((l) => l.id)).toEqual(["gone"]);
    expect(fx.granted.map((l) => l.id)).toEqual(["next"]);
    // Its late claim changes nothing.
    expect(renew(p, { leaseId: "gone", fence: 2 }, 520).outcome.status).not.toBe("ok");
  });

  it("claimMs is capped by the lease's TTL and must be a positive integer", () => {
    const p = createPool(config);
    acquire(p, { leaseId: "a", holder: "a" }, 0);
    acquire(p, { leaseId: "b", holder: "b", ttlMs: 300, claimMs: 900 }, 0);
    expect(release(p, { leaseId: "a", fence: 1 }, 0).effects.granted).toMatchObject([{ id: "b", expiresAt: 300 }]);
    try {
      acquire(p, { leaseId: "c", holder: "c", claimMs: 0 }, 0);
      expect.unreachable();
    } catch (error) {
      expect(isLeaseError(error) && error.code).toBe("INVALID_ARGUMENT");
    }
  });
});
