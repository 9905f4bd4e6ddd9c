import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DEFAULT_QUEUE_MODE, validateConfig } from "../../src/core/config.ts";
import { mergeStats } from "../../src/client/sharded-leases.ts";
import { acquire, createPool, stats } from "../../src/core/index.ts";
import { shareConfig } from "../../src/core/shares.ts";
import { pickShard, shardLimits, shardOf } from "../../src/core/shard.ts";
import { simulate } from "../../bench/simulate.ts";

describe("shardLimits", () => {
  it.each([
    { limit: 18, shards: 4, expected: [5, 5, 4, 4] },
    { limit: 3, shards: 5, expected: [1, 1, 1, 0, 0] },
    { limit: 10, shards: 1, expected: [10] },
  ])("splits $limit over $shards shards", ({ limit, shards, expected }) => {
    expect(shardLimits(limit, shards)).toEqual(expected);
  });

  it("always sums to exactly the global limit", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 100_000 }), fc.integer({ min: 1, max: 1024 }), (limit, shards) => {
        const parts = shardLimits(limit, shards);
        expect(parts.reduce((a, b) => a + b, 0)).toBe(limit);
        expect(Math.max(...parts) - Math.min(...parts)).toBeLessThanOrEqual(1);
      }),
    );
  });
});

describe("pickShard", () => {
  const loads = [
    { held: 5, waiting: 3, limit: 5 },
    { held: 2, waiting: 0, limit: 5 },
    { held: 0, waiting: 0, limit: 0 },
  ];
  it("takes the less pressed of the two choices, never a shard without slots", () => {
    expect(pickShard(loads, 0, 1)).toBe(1);
    expect(pickShard(loads, 1, 0)).toBe(1);
    expect(pickShard(loads, 2, 0)).toBe(0);
    expect(pickShard(loads, 1, 1)).toBe(1);
  });
});

describe("simulator", () => {
  it("holds the global limit across shards with batching, and beats one shard", () => {
    const common = {
      ratePerSec: 4000,
      isolates: 50,
      limit: 60,
      idleMs: 10,
      durationMs: 500,
      oneWayMs: 5,
      serviceMs: 5,
      callCostMs: 1,
      waitMs: 1000,
      seed: 3,
    };
    const one = simulate({ ...common, name: "one", shards: 1, maxBlock: 0 });
    const many = simulate({ ...common, name: "many", shards: 8, maxBlock: 4 });
    expect(many.peakHeld).toBeLessThanOrEqual(60);
    expect(one.peakHeld).toBeLessThanOrEqual(60);
    expect(many.goodputPerSec).toBeGreaterThan(one.goodputPerSec * 2);
    expect(many.callsPerRequest).toBeLessThan(2);
    expect(one.callsPerRequest).toBeGreaterThanOrEqual(2);
  });

  it("one object with releases carried by the next acquire: fewer calls, the limit held, no request lost", () => {
    const common = {
      name: "carry",
      ratePerSec: 800,
      isolates: 2,
      shards: 1,
      limit: 20,
      maxBlock: 0,
      idleMs: 0,
      durationMs: 2000,
      oneWayMs: 2,
      serviceMs: 10,
      callCostMs: 0.2,
      waitMs: 1000,
      seed: 5,
    };
    const own = simulate(common);
    const carried = simulate({ ...common, carryMs: 5 });
    for (const r of [own, carried]) {
      expect(r.peakHeld).toBeLessThanOrEqual(20);
      expect(r.completed + r.shed).toBe(r.offered);
    }
    expect(own.callsPerRequest).toBeGreaterThanOrEqual(2);
    expect(carried.callsPerRequest).toBeLessThan(1.3);
    // A quiet pool: nothing comes to carry a release, which goes out on its own after carryMs.
    const quiet = simulate({ ...common, ratePerSec: 20, carryMs: 5 });
    expect(quiet.callsPerRequest).toBeGreaterThanOrEqual(1.8);
    expect(quiet.completed + quiet.shed).toBe(quiet.offered);
  });
});

describe("shareConfig", () => {
  const base = {
    limit: 10,
    maxQueue: 7,
    waitMs: 500,
    leaseTtlMs: 30_000,
    reserved: 3,
    batchMax: 5,
    adaptive: { floor: 3 },
  };
  it("a share's pool: limit the share, reserve, batch cap and adaptive floor scaled to it, always valid", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 40 }), fc.nat(40), (limit, raw) => {
        const share = raw % (limit + 1);
        const c = shareConfig({ ...base, limit }, limit, share);
        expect(c.limit).toBe(Math.max(1, share));
        expect(c.reserved ?? 0).toBeLessThanOrEqual(Math.floor((base.reserved * share) / limit));
        expect(c.maxQueue).toBe(base.maxQueue);
        expect(validateConfig(c)).toEqual({ ...c, queue: c.queue ?? DEFAULT_QUEUE_MODE });
      }),
    );
    expect(shareConfig(base, 10, 10)).toMatchObject({ limit: 10, reserved: 3, batchMax: 5, adaptive: { floor: 3 } });
    expect(shareConfig(base, 10, 4)).toMatchObject({ limit: 4, reserved: 1, batchMax: 2, adaptive: { floor: 1 } });
  });
});

describe("shardOf", () => {
  it.each([
    ["main", { pool: "main", shard: "root" }],
    ["main#0", { pool: "main", shard: "0" }],
    ["a#b#12", { pool: "a#b", shard: "12" }],
    ["main#01", { pool: "main#01", shard: "root" }],
    ["main#1024", { pool: "main#1024", shard: "root" }],
    ["#3", { pool: "#3", shard: "root" }],
  ])("%s is %o", (name, expected) => {
    expect(shardOf(name)).toEqual(expected);
  });
  it("an object without a name is no part of a pool", () => {
    expect(shardOf(undefined)).toBeNull();
    expect(shardOf("")).toBeNull();
  });
});

describe("mergeStats", () => {
  it("merges every field of the shards' and the root's stats on purpose, none copied from the first", () => {
    const now = 1_000_000;
    const a = createPool({ limit: 4, maxQueue: 5, waitMs: 100, leaseTtlMs: 1000 });
    const b = createPool({ limit: 4, maxQueue: 7, waitMs: 300, leaseTtlMs: 3000, queue: "adaptive" });
    a.share = 1;
    b.share = 3;
    acquire(a, { leaseId: "a1", holder: "x" }, now);
    acquire(a, { leaseId: "a2", holder: "x", waitMs: 50 }, now);
    acquire(b, { leaseId: "b1", holder: "y" }, now);
    const sa = { ...stats(a, now + 10), share: { share: 1, peak: 2, failure: null } };
    const sb = {
      ...stats(b, now + 10),
      share: { share: 3, peak: 1, failure: "COORDINATOR_UNAVAILABLE: gone" },
      recovery: { endsInMs: 500, recovered: 2 },
    };
    const root = {
      ...stats(createPool({ limit: 10, maxQueue: 1, waitMs: 100, leaseTtlMs: 1000 }), now + 10),
      shares: { limit: 10, layout: { count: 2, split: "demand" as const }, shards: [] },
    };
    const m = mergeStats([sa, sb, root]);
    expect(m).toMatchObject({
      limit: 10,
      held: 2,
      waiting: 1,
      maxWaitMs: 10,
      maxQueue: 13,
      waitMs: 300,
      leaseTtlMs: 3000,
      recovery: { endsInMs: 500, recovered: 2 },
      share: { share: 4, peak: 3, failure: "COORDINATOR_UNAVAILABLE: gone" },
      shares: root.shares,
    });
    expect(m.effectiveLimit).toBe(sa.effectiveLimit + sb.effectiveLimit + root.effectiveLimit);
    expect(m.leases.map((l) => l.idPrefix).sort()).toEqual(["a1", "b1"]);
    expect(m.counters.granted).toBe(2);
    // Without a root: the shards' limits summed, no recovery, no shares.
    expect(mergeStats([stats(a, now), stats(b, now)])).toMatchObject({ limit: 8, recovery: null, shares: undefined });
  });
});
