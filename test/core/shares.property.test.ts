import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Layout,
  type LeaseRef,
  type PoolConfig,
  type PoolState,
  acquire,
  cancel,
  createPool,
  release,
} from "../../src/core/index.ts";
import {
  REPORT_EVERY_MS,
  ROOT_SHARD,
  type RootSnapshot,
  type RootState,
  type ShardSide,
  applyShare,
  createRoot,
  createShardSide,
  maxMin,
  notePeak,
  report,
  reserved,
  rootSnapshot,
  settleReport,
  shareOwn,
  takeReport,
} from "../../src/core/shares.ts";

/**
 * One limit shared by demand (`src/core/shares.ts`), driven through generated interleavings: callers
 * acquire and release on the root's own pool and on up to four shards (real core pools), shards
 * send reports whose answers arrive late, never (the call failed) or after other steps, the layout
 * changes, the root restarts from what it persisted, shards restart from their persisted share.
 * After every step: the shares in force sum to at most the limit, the root's reserves do too, and
 * the live leases across every pool never exceed the limit.
 */
const RUNS = Number(process.env.LEASEGATE_PROPERTY_RUNS ?? 2_000);

type Op =
  | { kind: "acquire"; at: number; wait: boolean }
  | { kind: "release"; at: number; pick: number }
  | { kind: "send"; at: number }
  | { kind: "deliver"; at: number }
  | { kind: "lose"; at: number }
  | { kind: "rootTick" }
  | { kind: "rootRestart" }
  | { kind: "shardRestart"; at: number }
  | { kind: "layout"; count: number; even: boolean }
  | { kind: "advance"; ms: number };

/** `at`: 0 is the root's own pool, 1..4 the shards `${pool}#0..3`. */
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant("acquire" as const), at: fc.nat(4), wait: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("release" as const), at: fc.nat(4), pick: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("send" as const), at: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("deliver" as const), at: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("lose" as const), at: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 2, arbitrary: fc.constant({ kind: "rootTick" as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: "rootRestart" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("shardRestart" as const), at: fc.integer({ min: 1, max: 4 }) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("layout" as const),
      count: fc.integer({ min: 1, max: 4 }),
      even: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("advance" as const), ms: fc.integer({ min: 0, max: 2500 }) }) },
);

interface Shard {
  pool: PoolState;
  side: ShardSide;
  /** The share persisted in the shard's meta (a restarted shard enforces it). */
  kept: number;
  /** The root's answer on its way: `share` of `limit`. */
  pending: { share: number; limit: number } | null;
}

let steps = 0;

function run(limit: number, first: Layout, ops: Op[]): void {
  const base: PoolConfig = { limit, maxQueue: 50, waitMs: 100_000, leaseTtlMs: 10_000_000 };
  let now = 1_000_000;
  let layout = first;
  let root: RootState = createRoot(limit, layout);
  let kept: RootSnapshot = rootSnapshot(root);
  const rootPool = createPool(base);
  let rootPeak = 0;
  const shards: Shard[] = Array.from({ length: 4 }, () => {
    const pool = createPool(base);
    applyShare(pool, base, limit, 0, now);
    return { pool, side: createShardSide(0), kept: 0, pending: null };
  });
  const pools = () => [rootPool, ...shards.map((s) => s.pool)];
  let seq = 0;
  // The root persists before it answers (the Durable Object's output gate): what a restart finds.
  const persist = () => {
    kept = rootSnapshot(root);
  };
  const check = () => {
    const inForce = (rootPool.share ?? limit) + shards.reduce((a, s) => a + (s.pool.share ?? 0), 0);
    expect(inForce).toBeLessThanOrEqual(limit);
    expect(reserved(root)).toBeLessThanOrEqual(limit);
    const live = pools().reduce((a, p) => a + p.leases.size, 0);
    expect(live).toBeLessThanOrEqual(limit);
    // The root's reserve for each shard covers what that shard holds and enforces.
    for (const [i, s] of shards.entries()) {
      const a = root.accounts.get(String(i));
      const cover = a ? a.reserve : 0;
      expect(s.pool.leases.size).toBeLessThanOrEqual(Math.max(cover, s.pending ? s.pending.share : 0, s.side.enforced));
    }
    steps++;
  };

  for (const o of ops) {
    if (o.kind === "advance") now += o.ms;
    else if (o.kind === "acquire") {
      const pool = pools()[o.at]!;
      const { outcome } = acquire(pool, { leaseId: `l${++seq}`, holder: "h", waitMs: o.wait ? 100_000 : 0 }, now);
      if (o.at === 0) {
        rootPeak = Math.max(rootPeak, pool.leases.size + pool.queue.length);
        // The root's pool rebalances at once when a caller waits for want of a share.
        if (outcome.status === "queued") {
          shareOwn(root, rootPool, rootPeak, now);
          persist();
        }
      } else notePeak(shards[o.at - 1]!.side, pool.leases.size, pool.queue.length);
    } else if (o.kind === "release") {
      const pool = pools()[o.at]!;
      const held = [...pool.leases.values()];
      if (held.length > 0) {
        const l = held[o.pick % held.length]!;
        const ref: LeaseRef = { leaseId: l.id, fence: l.fence };
        release(pool, ref, now);
      }
    } else if (o.kind === "send") {
      const s = shards[o.at - 1]!;
      if (s.side.inFlight) continue;
      const r = takeReport(s.side, String(o.at - 1), s.pool.leases.size, s.pool.queue.length, now);
      const { share } = report(root, rootPool, rootPeak, r, now);
      rootPeak = rootPool.leases.size + rootPool.queue.length;
      persist();
      s.pending = { share, limit: root.limit };
    } else if (o.kind === "deliver" || o.kind === "lose") {
      const s = shards[o.at - 1]!;
      if (!s.pending) continue;
      if (o.kind === "deliver") {
        settleReport(s.side, s.pending.share);
        applyShare(s.pool, base, s.pending.limit, s.pending.share, now);
        s.kept = s.pending.share;
      } else settleReport(s.side, null);
      s.pending = null;
    } else if (o.kind === "rootTick") {
      shareOwn(root, rootPool, rootPeak, now);
      rootPeak = rootPool.leases.size + rootPool.queue.length;
      persist();
    } else if (o.kind === "rootRestart") {
      // Memory lost; the accounts come back from storage. Leases of its own pool are recovered
      // from their holders (kept here as they are); its own share is the one persisted.
      root = createRoot(limit, layout, kept);
      const own = root.accounts.get(ROOT_SHARD);
      rootPool.share = own ? own.share : root.accounts.size > 0 ? 0 : undefined;
      rootPeak = 0;
      // A report in flight fails with the restart (the root may or may not have applied it).
      for (const s of shards) {
        if (s.pending) settleReport(s.side, null);
        s.pending = null;
      }
    } else if (o.kind === "shardRestart") {
      const s = shards[o.at - 1]!;
      s.side = createShardSide(s.kept);
      applyShare(s.pool, base, limit, s.kept, now);
      s.pending = null;
    } else if (o.kind === "layout") {
      layout = { count: Math.min(o.count, limit), split: o.even ? "even" : "demand" };
      root.layout = layout;
    }
    check();
  }
}

describe("one limit shared by demand", () => {
  it(`shares in force, reserves and live leases never exceed the limit (${RUNS} sequences)`, {
    timeout: 60_000,
  }, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 4 }),
        fc.boolean(),
        fc.array(op, { minLength: 1, maxLength: 80, size: "max" }),
        (limit, count, even, ops) =>
          run(limit, { count: Math.min(count, limit), split: even ? "even" : "demand" }, ops),
      ),
      { numRuns: RUNS },
    );
    console.log(`[reliability] shares: ${RUNS} sequences, ${steps} steps checked`);
  });

  it("a busy shard's share grows as a quiet one gives its slots back, and shrinks when the demand moves", () => {
    const base: PoolConfig = { limit: 12, maxQueue: 100, waitMs: 100_000, leaseTtlMs: 10_000_000 };
    let now = 1_000_000;
    const root = createRoot(12, { count: 2, split: "demand" });
    const rootPool = createPool(base);
    const shards = [0, 1].map(() => {
      const pool = createPool(base);
      applyShare(pool, base, 12, 0, now);
      return { pool, side: createShardSide(0), demand: 0 };
    });
    let seq = 0;
    // Each round: every shard's callers finish (their slots go to its queue) and new ones keep
    // held + waiting at its demand; then each shard reports and applies the answer.
    const round = () => {
      for (const s of shards) {
        for (const l of [...s.pool.leases.values()]) release(s.pool, { leaseId: l.id, fence: l.fence }, now);
        while (s.pool.queue.length > Math.max(0, s.demand - s.pool.leases.size))
          cancel(s.pool, s.pool.queue[s.pool.queue.length - 1]!.leaseId, now);
        while (s.pool.leases.size + s.pool.queue.length < s.demand)
          acquire(s.pool, { leaseId: `l${++seq}`, holder: "h", waitMs: 100_000 }, now);
        notePeak(s.side, s.pool.leases.size, s.pool.queue.length);
      }
      for (const [i, s] of shards.entries()) {
        const r = takeReport(s.side, String(i), s.pool.leases.size, s.pool.queue.length, now);
        const { share } = report(root, rootPool, 0, r, now);
        settleReport(s.side, share);
        applyShare(s.pool, base, 12, share, now);
        expect(reserved(root)).toBeLessThanOrEqual(12);
      }
      now += REPORT_EVERY_MS;
    };
    shards[0]!.demand = 20;
    shards[1]!.demand = 2;
    for (let k = 0; k < 4; k++) round();
    // Demand 20 and 2 (+1 spare each): max-min gives 9 and 3; the root's own pool, idle, keeps nothing.
    expect(shards.map((s) => s.pool.share)).toEqual([9, 3]);
    expect(shards.map((s) => s.pool.leases.size)).toEqual([9, 2]);
    expect(rootPool.share).toBe(0);
    // The demand moves: shard 0 goes quiet, shard 1 gets busy. Once the window has passed, shard 1
    // has every slot, and shard 0 none (it stops reporting).
    shards[0]!.demand = 0;
    shards[1]!.demand = 22;
    for (let k = 0; k < 6; k++) round();
    expect(shards.map((s) => s.pool.share)).toEqual([0, 12]);
    expect(shards[1]!.pool.leases.size).toBe(12);
  });

  it("max-min: equal levels, wants met below the level, never more than the capacity", () => {
    expect(maxMin(12, [21, 3])).toEqual([9, 3]);
    expect(maxMin(10, [5, 5, 5])).toEqual([4, 3, 3]);
    expect(maxMin(10, [0, 2, 100])).toEqual([0, 2, 8]);
    expect(maxMin(3, [4, 4, 4, 4])).toEqual([1, 1, 1, 0]);
    fc.assert(
      fc.property(fc.nat(50), fc.array(fc.nat(30), { maxLength: 8 }), (cap, wants) => {
        const out = maxMin(cap, wants);
        expect(out.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(cap);
        for (const [i, x] of out.entries()) expect(x).toBeLessThanOrEqual(wants[i]!);
        // Nothing left over while someone wants more.
        if (out.some((x, i) => x < wants[i]!)) expect(out.reduce((a, b) => a + b, 0)).toBe(cap);
      }),
    );
  });
});
