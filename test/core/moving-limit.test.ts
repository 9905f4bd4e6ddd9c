/**
 * Fixed counts under a limit that moves (`LEASE_LIMIT=auto`, an operator's limit): the reserved
 * slots, the batch cap and the adaptive floor are clamped to the limit in force, so none of them
 * ever exceeds it, and the pool keeps granting. Generated sequences of limit moves, acquires of
 * every class, releases and hold times against the pure core.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Lease,
  type PoolConfig,
  type PoolState,
  type Priority,
  PRIORITIES,
  acquire,
  configFromEnv,
  createPool,
  poolSettings,
  reconfigure,
  release,
  restore,
  setLimit,
  snapshot,
  stats,
} from "../../src/core/index.ts";

const RUNS = Number(process.env.LEASEGATE_PROPERTY_RUNS ?? 2_000);

type Op =
  | { kind: "limit"; limit: number }
  | { kind: "override"; limit: number | null }
  | { kind: "acquire"; priority: Priority }
  | { kind: "release"; pick: number; holdMs: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant("limit" as const), limit: fc.integer({ min: 1, max: 12 }) }),
  fc.record({
    kind: fc.constant("override" as const),
    limit: fc.oneof(fc.constant(null), fc.integer({ min: 1, max: 12 })),
  }),
  fc.record({ kind: fc.constant("acquire" as const), priority: fc.constantFrom(...PRIORITIES) }),
  fc.record({ kind: fc.constant("release" as const), pick: fc.nat(), holdMs: fc.integer({ min: 0, max: 200 }) }),
);

const batchHeld = (s: PoolState) => [...s.leases.values()].filter((l) => l.priority === "batch").length;

describe("fixed counts under a moving limit", () => {
  it("reserved, batch and the adaptive floor never exceed the limit in force, and a grant never passes it", () => {
    fc.assert(
      fc.property(
        fc.record({
          reserved: fc.integer({ min: 0, max: 10 }),
          batchMax: fc.integer({ min: 0, max: 10 }),
          floor: fc.integer({ min: 1, max: 10 }),
          adaptive: fc.boolean(),
        }),
        fc.array(op, { maxLength: 80 }),
        (counts, ops) => {
          const config: PoolConfig = {
            limit: 11,
            maxQueue: 0,
            waitMs: 0,
            leaseTtlMs: 60_000,
            reserved: counts.reserved,
            batchMax: counts.batchMax,
            adaptive: counts.adaptive ? { floor: counts.floor } : undefined,
          };
          const pool = createPool(config);
          let now = 1_000;
          let learned = config.limit;
          let seq = 0;
          const held: Lease[] = [];
          for (const o of ops) {
            now += 10;
            if (o.kind === "limit") {
              // A learning: the learned limit moves, the counts stay as configured.
              learned = o.limit;
              if (pool.limitOverride === null) reconfigure(pool, { ...pool.config, limit: learned }, now);
            } else if (o.kind === "override") {
              setLimit(pool, o.limit, learned, now);
            } else if (o.kind === "acquire") {
              const before = pool.leases.size;
              const { outcome } = acquire(pool, { leaseId: `l${++seq}`, holder: "h", priority: o.priority }, now);
              const s = stats(pool, now);
              if (outcome.status === "granted") {
                held.push(outcome.lease);
                // A grant never takes the pool past the limit in force ...
                expect(pool.leases.size).toBeLessThanOrEqual(s.effectiveLimit);
                // ... a normal or batch one leaves the reserve free ...
                if (o.priority !== "critical")
                  expect(pool.leases.size).toBeLessThanOrEqual(s.effectiveLimit - s.reserved);
                // ... and a batch one stays under the batch cap.
                if (o.priority === "batch") expect(batchHeld(pool)).toBeLessThanOrEqual(counts.batchMax);
              } else if (before === 0 && o.priority !== "batch") {
                // An empty pool grants a normal request whatever the counts: the reserve never
                // takes the whole limit.
                throw new Error(
                  `an empty pool refused a ${o.priority} request (limit ${s.limit}, reserved ${s.reserved})`,
                );
              }
            } else if (held.length > 0) {
              const [lease] = held.splice(o.pick % held.length, 1);
              release(pool, { leaseId: lease!.id, fence: lease!.fence }, now + o.holdMs);
            }
            const s = stats(pool, now);
            expect(s.reserved).toBeLessThanOrEqual(s.effectiveLimit - 1);
            expect(s.effectiveLimit).toBeLessThanOrEqual(s.limit);
            // The adaptive limit moves between the floor and the limit in force (`capacity`).
            if (counts.adaptive) expect(s.effectiveLimit).toBeGreaterThanOrEqual(Math.min(counts.floor, s.limit));
          }
        },
      ),
      { numRuns: RUNS },
    );
  });

  it("a limit moved below the reserve (or the batch cap, or the floor) is applied, not refused", () => {
    const pool = createPool({
      limit: 10,
      maxQueue: 0,
      waitMs: 0,
      leaseTtlMs: 60_000,
      reserved: 6,
      batchMax: 8,
      adaptive: { floor: 5 },
    });
    expect(() => reconfigure(pool, { ...pool.config, limit: 2 }, 1)).not.toThrow();
    expect(stats(pool, 1)).toMatchObject({ limit: 2, reserved: 1 });
    const { outcome } = acquire(pool, { leaseId: "a", holder: "h" }, 2);
    expect(outcome.status).toBe("granted");
    expect(acquire(pool, { leaseId: "b", holder: "h" }, 3).outcome.status).toBe("rejected");
    expect(acquire(pool, { leaseId: "c", holder: "h", priority: "critical" }, 4).outcome.status).toBe("granted");
    // The counts are kept as configured: a raise gives them back whole.
    reconfigure(pool, { ...pool.config, limit: 10 }, 5);
    expect(stats(pool, 5).reserved).toBe(6);
  });
});

describe("LEASE_LIMIT=auto with the fixed counts", () => {
  it("keeps LEASE_RESERVED, LEASE_BATCH_MAX and LEASE_ADAPTIVE as configured counts", () => {
    const config = configFromEnv({
      LEASE_LIMIT: "auto",
      LEASE_RESERVED: "3",
      LEASE_BATCH_MAX: "5",
      LEASE_ADAPTIVE: "on",
      LEASE_ADAPTIVE_FLOOR: "4",
    });
    expect(config).toMatchObject({ limit: 1, reserved: 3, batchMax: 5, adaptive: { floor: 4 } });
    // Before the first learning the pool has one slot: the reserve leaves it to everyone.
    expect(stats(createPool(config), 0)).toMatchObject({ limit: 1, reserved: 0 });
  });

  it("LEASE_ADAPTIVE: the first learning lifts the adaptive limit with the start limit of 1, as a restore does", () => {
    const pool = createPool(configFromEnv({ LEASE_LIMIT: "auto", LEASE_ADAPTIVE: "on" }));
    reconfigure(pool, { ...pool.config, limit: 20 }, 1);
    expect(stats(pool, 1)).toMatchObject({ limit: 20, effectiveLimit: 20 });
    const restored = restore(
      { ...pool.config, limit: 30 },
      snapshot(createPool(configFromEnv({ LEASE_LIMIT: "auto", LEASE_ADAPTIVE: "on" }))),
      [],
    );
    expect(stats(restored, 1)).toMatchObject({ limit: 30, effectiveLimit: 30 });
    // Once it has observed holds, the adaptive limit is its own: a raise lets it probe upward.
    const lease = acquire(pool, { leaseId: "a", holder: "h" }, 2).outcome;
    if (lease.status !== "granted") throw new Error(lease.status);
    release(pool, { leaseId: "a", fence: lease.lease.fence }, 50);
    const observed = pool.adaptive!.limit;
    reconfigure(pool, { ...pool.config, limit: 40 }, 60);
    expect(pool.adaptive!.limit).toBe(observed);
  });

  it("the adaptive floor defaults to a quarter of LEASE_LIMIT_MAX, else 1", () => {
    expect(configFromEnv({ LEASE_LIMIT: "auto", LEASE_ADAPTIVE: "on", LEASE_LIMIT_MAX: "40" }).adaptive).toEqual({
      floor: 10,
      tolerance: undefined,
    });
    expect(configFromEnv({ LEASE_LIMIT: "auto", LEASE_ADAPTIVE: "on" }).adaptive?.floor).toBe(1);
  });

  it("takes LEASE_BLOCK with auto", () => {
    expect(() => configFromEnv({ LEASE_LIMIT: "auto", LEASE_BLOCK: "4" })).not.toThrow();
  });

  it.each([
    [{ LEASE_LIMIT_MAX: "10", LEASE_RESERVED: "10" }, "LEASE_RESERVED", "from 0 to 9"],
    [{ LEASE_LIMIT_MAX: "10", LEASE_BATCH_MAX: "11" }, "LEASE_BATCH_MAX", "from 0 to 10"],
    [
      { LEASE_LIMIT_MAX: "10", LEASE_ADAPTIVE: "on", LEASE_ADAPTIVE_FLOOR: "11" },
      "LEASE_ADAPTIVE_FLOOR",
      "from 1 to 10",
    ],
    [{ LEASE_RESERVED: "x" }, "LEASE_RESERVED", "an integer"],
    [{ LEASE_RESERVED: "10000" }, "LEASE_RESERVED", "from 0 to 9999"],
    [{ LEASE_SHARDS: "2000" }, "LEASE_SHARDS", "from 1 to 1024"],
  ])("refuses %j with INVALID_CONFIG naming %s", (env, name, what) => {
    expect(() => configFromEnv({ LEASE_LIMIT: "auto", ...env })).toThrow(
      expect.objectContaining({
        code: "INVALID_CONFIG",
        message: expect.stringMatching(new RegExp(`${name}[\\s\\S]*${what}|${what}[\\s\\S]*${name}`)),
      }),
    );
  });

  it("takes shards: the pool's root learns the limit and shares it", () => {
    expect(poolSettings({ LEASE_LIMIT: "auto", LEASE_SHARDS: "3" }).shards).toBe(3);
  });

  it("a fixed limit still refuses counts that do not fit it", () => {
    expect(() => configFromEnv({ LEASE_LIMIT: "4", LEASE_RESERVED: "4" })).toThrow(
      expect.objectContaining({ code: "INVALID_CONFIG", message: expect.stringContaining("from 0 to 3") }),
    );
  });
});
