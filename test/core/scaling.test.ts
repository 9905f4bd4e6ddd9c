import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type BlockEffect,
  abandon,
  createBlock,
  expireIdle,
  finished,
  granted,
  observe,
  refused,
  request,
  retired,
} from "../../src/core/lease-block.ts";
import { DEFAULT_QUEUE_MODE, validateConfig } from "../../src/core/config.ts";
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

describe("lease block", () => {
  type L = { n: number };
  it("serves a second local request from the idle block without a round trip", () => {
    const b = createBlock<L>({ maxBlock: 2, idleMs: 10 });
    expect(request(b, "r1", 0)).toEqual([{ kind: "acquire" }]);
    expect(granted(b, { n: 1 }, 5)).toEqual([{ kind: "start", request: "r1", lease: { n: 1 } }]);
    expect(finished(b, { n: 1 }, 8)).toEqual([]);
    expect(request(b, "r2", 9)).toEqual([{ kind: "start", request: "r2", lease: { n: 1 } }]);
  });

  it("hands a finished lease straight to a local waiter", () => {
    const b = createBlock<L>({ maxBlock: 1, idleMs: 10 });
    request(b, "r1", 0);
    granted(b, { n: 1 }, 1);
    observe(b, 0, 1); // the grant's answer: nobody waits at the coordinator
    expect(request(b, "r2", 2)).toEqual([]);
    expect(finished(b, { n: 1 }, 3)).toEqual([{ kind: "start", request: "r2", lease: { n: 1 } }]);
  });

  it("returns leases idle for idleMs", () => {
    const b = createBlock<L>({ maxBlock: 2, idleMs: 10 });
    request(b, "r1", 0);
    granted(b, { n: 1 }, 1);
    finished(b, { n: 1 }, 2);
    expect(expireIdle(b, 11)).toEqual([]);
    expect(expireIdle(b, 12)).toEqual([{ kind: "release", lease: { n: 1 } }]);
  });

  it("never holds or asks for more than maxBlock, and loses no lease or request", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.constantFrom("request", "grant", "refuse", "finish", "tick"), { maxLength: 80 }),
        (maxBlock, steps) => {
          const b = createBlock<L>({ maxBlock, idleMs: 3 });
          let now = 0;
          let seq = 0;
          let inFlight = 0;
          const running: L[] = [];
          const released: L[] = [];
          let granted_ = 0;
          let started = 0;
          let failed = 0;
          let requested = 0;
          const apply = (fx: BlockEffect<L>[]) => {
            for (const f of fx) {
              if (f.kind === "acquire") inFlight++;
              if (f.kind === "start") {
                started++;
                running.push(f.lease);
              }
              if (f.kind === "release") released.push(f.lease);
            }
          };
          for (const step of steps) {
            now++;
            if (step === "request") {
              requested++;
              apply(request(b, `r${seq++}`, now));
            }
            if (step === "grant" && inFlight > 0) {
              inFlight--;
              granted_++;
              apply(granted(b, { n: granted_ }, now));
            }
            if (step === "refuse" && inFlight > 0) {
              inFlight--;
              if (refused(b) !== undefined) failed++;
            }
            if (step === "finish" && running.length > 0) apply(finished(b, running.shift()!, now));
            if (step === "tick") apply(expireIdle(b, now));
            expect(b.idle.length + b.inUse + b.inFlight).toBeLessThanOrEqual(maxBlock);
            expect(b.inFlight).toBe(inFlight);
            // Every lease granted is running, idle or released: none is lost.
            expect(running.length + b.idle.length + released.length).toBe(granted_);
            // Every request is started, failed or still waiting locally.
            expect(started + failed + b.waiting.length).toBe(requested);
          }
        },
      ),
      { numRuns: 2000 },
    );
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
        for (const c of parts) expect(validateConfig(c)).toEqual({ ...c, queue: c.queue ?? DEFAULT_QUEUE_MODE });
      }),
    );
  });
  it("leaves an unsharded config as it is and refuses more shards than slots", () => {
    expect(shardConfig(base, 0, 1)).toBe(base);
    expect(() => shardConfig(base, 0, 11)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => shardConfig(base, 2, 2)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
  });
});

describe("lease block: retired and abandoned", () => {
  it("a retired lease frees room for an acquire for a local waiter; an abandoned waiter leaves the queue", () => {
    const s = createBlock<string>({ maxBlock: 1, idleMs: 5 });
    expect(request(s, "a", 0)).toEqual([{ kind: "acquire" }]);
    expect(granted(s, "L1", 1)).toEqual([{ kind: "start", request: "a", lease: "L1" }]);
    expect(request(s, "b", 2)).toEqual([]);
    expect(request(s, "c", 2)).toEqual([]);
    expect(abandon(s, "c")).toBe(true);
    expect(abandon(s, "c")).toBe(false);
    // L1 is too old to hand on: it goes back; b is still waiting, so the block asks again.
    expect(retired(s, 3)).toEqual([{ kind: "acquire" }]);
    expect(s).toMatchObject({ inUse: 0, inFlight: 1, waiting: ["b"] });
  });
});
