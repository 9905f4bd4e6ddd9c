import { describe, expect, it } from "vitest";
import { stopMarginMs } from "../../src/client/heartbeat.ts";
import { CLAIM_WINDOW, RoundTrips, claimDelayMs } from "../../src/client/round-trips.ts";
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

/** The window a client asks for follows its measured round trips, within bounds (src/client/round-trips.ts). */
describe("the claim window from measured round trips", () => {
  const measured = (samples: number[]) => {
    const trips = new RoundTrips();
    for (const ms of samples) trips.record(ms);
    return trips;
  };

  it("is the initial window before any round trip, then four bounded round trips", () => {
    expect(new RoundTrips().claimWindowMs()).toBe(CLAIM_WINDOW.initialMs);
    // One sample of 60 ms: a bound of 60 + 4 × 30, four of them.
    expect(measured([60]).claimWindowMs()).toBe(720);
    // Steady 150 ms round trips: the deviation decays and the window closes in on 4 × 150.
    expect(measured(Array(60).fill(150)).claimWindowMs()).toBe(600);
    // Next to the coordinator, the floor.
    expect(measured([40]).claimWindowMs()).toBe(CLAIM_WINDOW.minMs);
  });

  it("tracks the round trip as it moves: a coordinator that slows down widens the window, one that speeds up narrows it", () => {
    const slowing = measured([...Array(30).fill(40), ...Array(30).fill(200)]);
    expect(slowing.claimWindowMs()).toBeGreaterThanOrEqual(4 * 200);
    const speeding = measured([...Array(30).fill(200), ...Array(60).fill(140)]);
    expect(speeding.claimWindowMs()).toBeLessThan(slowing.claimWindowMs());
    expect(speeding.claimWindowMs()).toBeLessThan(4 * 150);
  });

  it("is bounded below and above, and ignores samples that are not durations", () => {
    expect(measured(Array(20).fill(0.3)).claimWindowMs()).toBe(CLAIM_WINDOW.minMs);
    expect(measured(Array(20).fill(900)).claimWindowMs()).toBe(CLAIM_WINDOW.maxMs);
    expect(measured([Number.NaN, -5, Number.POSITIVE_INFINITY]).claimWindowMs()).toBe(CLAIM_WINDOW.initialMs);
  });

  it("the claim goes a third into the window, sooner when the round trip needs it, a third in before any round trip", () => {
    expect(claimDelayMs(480, 40)).toBe(160);
    // 1000 − a 200 ms stop margin − two 300 ms round trips.
    expect(claimDelayMs(1000, 300)).toBe(200);
    expect(claimDelayMs(1000, 600)).toBe(0);
    expect(claimDelayMs(500, undefined)).toBe(166);
    // Whatever the round trip, the claim's answer is due back before the window less its margin.
    for (const rtt of [1, 10, 50, 100, 250, 400])
      for (const trips of [measured([rtt]), measured(Array(20).fill(rtt))]) {
        const windowMs = trips.claimWindowMs();
        const bound = trips.boundMs!;
        if (windowMs < CLAIM_WINDOW.maxMs)
          expect(claimDelayMs(windowMs, bound) + 2 * bound).toBeLessThanOrEqual(windowMs - stopMarginMs(windowMs));
      }
  });
});
