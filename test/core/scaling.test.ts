import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { validateConfig } from "../../src/core/config.ts";
import { pickShard, shardConfig, shardLimits } from "../../src/core/shard.ts";
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

describe("shardConfig", () => {
  const base = {
    limit: 10,
    maxQueue: 7,
    waitMs: 500,
    leaseTtlMs: 30_000,
    reserved: 3,
    batchMax: 5,
    adaptive: { floor: 3 },
  };
  it("splits the limit, queue cap, reserve and batch cap so each sums to at most the whole", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 10 }), (count) => {
        const parts = Array.from({ length: count }, (_, i) => shardConfig(base, i, count));
        expect(parts.reduce((a, c) => a + c.limit, 0)).toBe(base.limit);
        expect(parts.reduce((a, c) => a + c.maxQueue, 0)).toBe(base.maxQueue);
        expect(parts.reduce((a, c) => a + (c.reserved ?? 0), 0)).toBeLessThanOrEqual(base.reserved);
        expect(parts.reduce((a, c) => a + (c.batchMax ?? 0), 0)).toBeLessThanOrEqual(base.batchMax);
        for (const c of parts) expect(validateConfig(c)).toEqual(c);
      }),
    );
  });
  it("leaves an unsharded config as it is and refuses more shards than slots", () => {
    expect(shardConfig(base, 0, 1)).toBe(base);
    expect(() => shardConfig(base, 0, 11)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => shardConfig(base, 2, 2)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
  });
});
