import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AcquireResult,
  type Effects,
  type LeaseGrant,
  type PoolState,
  type PoolConfig,
  type PoolStats,
  type VerifyRef,
  acquire,
  createPool,
  leaseRef,
  restore,
  snapshot,
  release,
  renew,
  stats,
  tick,
} from "../../src/core/index.ts";

/**
 * The real Durable Object in workerd, driven by generated sequences, with the pure core as the
 * model: every answer (grant, fence, expiry, code, retry hint) and every stats snapshot must equal
 * what the core decides for the same calls at the same instants. Time is the test's: tests and
 * objects share one isolate, so `Date.now` is patched to a clock only the sequence moves.
 *
 * The run count is the figure quoted in the README's "Reliability" section; the core alone runs
 * 10,000 sequences in test/core/pool.property.test.ts.
 */
const DO_RUNS = 250;
const MAX_STEPS = 30;

// Must equal the bindings in vitest.workers.config.ts: the object reads its config from them.
const CONFIG: PoolConfig = { limit: 3, maxQueue: 5, waitMs: 400, leaseTtlMs: 30_000, queue: "fifo" };

/** The object under test: a pool of one object (a shard of a shared pool is tested in shards.test.ts). */
interface Variant {
  prefix: string;
  config: PoolConfig;
}
const WHOLE: Variant = { prefix: "model", config: CONFIG };

type Op =
  | { kind: "acquire"; waitMs: number; ttlMs: number }
  | { kind: "acquireMany"; ttlMs: number[] }
  | { kind: "releaseMany"; picks: number[]; stale: boolean[] }
  | { kind: "release"; pick: number; stale: boolean }
  | { kind: "forged"; fence: number }
  | { kind: "renew"; pick: number; ttlMs: number }
  | { kind: "crash"; pick: number }
  | { kind: "advance"; ms: number }
  | { kind: "restart" };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant("acquire" as const),
      waitMs: fc.integer({ min: 0, max: 500 }),
      ttlMs: fc.integer({ min: 1, max: 2000 }),
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat(), stale: fc.boolean() }), weight: 3 },
  // A client's coalesced calls: grants what is free now, defers the rest; releases in order.
  {
    arbitrary: fc.record({
      kind: fc.constant("acquireMany" as const),
      ttlMs: fc.array(fc.integer({ min: 1, max: 2000 }), { minLength: 1, maxLength: 5 }),
    }),
    weight: 2,
  },
  {
    arbitrary: fc
      .array(fc.tuple(fc.nat(), fc.boolean()), { minLength: 1, maxLength: 4 })
      .map((xs) => ({ kind: "releaseMany" as const, picks: xs.map((x) => x[0]), stale: xs.map((x) => x[1]) })),
    weight: 2,
  },
  { arbitrary: fc.record({ kind: fc.constant("forged" as const), fence: fc.integer({ min: 1, max: 50 }) }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant("renew" as const),
      pick: fc.nat(),
      ttlMs: fc.integer({ min: 1, max: 2000 }),
    }),
    weight: 2,
  },
  { arbitrary: fc.record({ kind: fc.constant("crash" as const), pick: fc.nat() }), weight: 1 },
  {
    // Small steps, and clock jumps past every deadline and TTL.
    arbitrary: fc.record({
      kind: fc.constant("advance" as const),
      ms: fc.oneof(fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: 5000 })),
    }),
    weight: 3,
  },
  { arbitrary: fc.constant({ kind: "restart" as const }), weight: 1 },
);

interface Pending {
  id: string;
  result?: AcquireResult;
  error?: unknown;
  done: Promise<void>;
}

interface Held {
  model: { id: string; fence: number };
  real: LeaseGrant;
  crashed: boolean;
}

/** The parts of a snapshot both sides must agree on (histogram timing aside, which is identical too). */
function comparable(s: PoolStats) {
  return {
    held: s.held,
    waiting: s.waiting,
    counters: s.counters,
    maxWaitMs: s.maxWaitMs,
    waitCount: s.waitTimeMs.count,
    waitSum: s.waitTimeMs.sum,
    leases: s.leases
      .map((l) => ({ fence: l.fence, ageMs: l.ageMs, expiresInMs: l.expiresInMs }))
      .sort((a, b) => a.fence - b.fence),
  };
}

let runSeq = 0;
let totalSteps = 0;
let restarts = 0;

async function runSequence(ops: Op[], variant: Variant = WHOLE): Promise<void> {
  const CONFIG = variant.config;
  const name = `${variant.prefix}-${++runSeq}`;
  let stub = env.COORDINATOR_DO.getByName(name);
  const realNow = Date.now;
  const base = realNow();
  let offset = 0;
  Date.now = () => base + offset;
  try {
    let model: PoolState = createPool(CONFIG);
    let seq = 0;
    const held: Held[] = [];
    /**
     * The model's token check: the object's (an HMAC with its own key) vouches for exactly the
     * id, fence, expiry and token it last answered a holder — so does this, from what holders hold.
     */
    const verifyModel: VerifyRef = (ref) =>
      held.some(
        (h) =>
          h.model.id === ref.leaseId &&
          h.real.fence === ref.fence &&
          h.real.expiresAt === ref.expiresAt &&
          h.real.token !== undefined &&
          h.real.token === ref.token,
      );
    const pending = new Map<string, Pending>();
    // Ids in queue order as clients saw them enter.
    let queued: string[] = [];

    const settle = async (fx: Effects, now: number): Promise<void> => {
      // The core times waiters out before it fills freed slots: settle in the same order.
      for (const w of fx.timedOut) {
        // Never timed out before its deadline (and, since both sides tick at every clock move, never after it).
        expect(w.deadline).toBeLessThanOrEqual(now);
        queued = queued.filter((id) => id !== w.leaseId);
        const p = pending.get(w.leaseId)!;
        await p.done;
        expect(p.result).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
        pending.delete(w.leaseId);
      }
      for (const l of fx.granted) {
        // Grants go to the oldest waiter first, and the object grants the same one, same fence.
        expect(queued.shift()).toBe(l.id);
        const p = pending.get(l.id)!;
        await p.done;
        expect(p.result).toMatchObject({
          ok: true,
          lease: { fence: l.fence, holder: l.id, grantedAt: now, expiresAt: l.expiresAt },
        });
        pending.delete(l.id);
        if (p.result?.ok) held.push({ model: { id: l.id, fence: l.fence }, real: p.result.lease, crashed: false });
      }
      for (const l of fx.expired) {
        const i = held.findIndex((h) => h.model.id === l.id);
        if (i >= 0) held.splice(i, 1);
      }
      // A lease forgotten in a restart and not recovered in the window is gone for good.
      if (!model.recovery)
        for (let i = held.length - 1; i >= 0; i--) if (!model.leases.has(held[i]!.model.id)) held.splice(i, 1);
    };

    const check = async (): Promise<void> => {
      const now = base + offset;
      const real = await stub.stats();
      const expected = stats(model, now);
      // held ≤ limit; no slot lost (a waiter never waits beside a free slot: held + free = limit).
      expect(real.held).toBeLessThanOrEqual(CONFIG.limit);
      expect(real.limit).toBe(CONFIG.limit);
      if (real.waiting > 0 && real.recovery === null) expect(real.held).toBe(CONFIG.limit);
      expect(comparable(real)).toEqual(comparable(expected));
      expect(real.recovery).toEqual(expected.recovery);
      expect(real.held).toBe(held.filter((h) => model.leases.has(h.model.id)).length);
      expect(real.waiting).toBe(queued.length);
      totalSteps++;
    };

    const advanceBoth = async (): Promise<void> => {
      const now = base + offset;
      const fx = tick(model, now);
      // What the object's timer or alarm would do at this instant; calling it directly keeps the
      // run deterministic (a real timer firing too is a no-op at the same instant).
      await runInDurableObject(stub, (instance) => instance.alarm());
      await settle(fx, now);
    };

    for (const o of ops) {
      const now = base + offset;
      switch (o.kind) {
        case "acquire": {
          const id = `m${seq++}`;
          const call = stub.acquire({ holder: id, waitMs: o.waitMs, ttlMs: o.ttlMs });
          const { outcome, effects } = acquire(
            model,
            { leaseId: id, holder: id, waitMs: o.waitMs, ttlMs: o.ttlMs },
            now,
          );
          if (outcome.status === "queued") {
            const p: Pending = { id, done: Promise.resolve() };
            p.done = call.then(
              (r) => {
                p.result = r;
              },
              (e) => {
                p.error = e;
              },
            );
            pending.set(id, p);
            queued.push(id);
            await settle(effects, now);
            // The object queued it too: it is waiting, not answered.
            await stub.stats();
            expect(p.result).toBeUndefined();
          } else {
            const r = await call;
            await settle(effects, now);
            if (outcome.status === "granted") {
              expect(r).toMatchObject({
                ok: true,
                lease: { fence: outcome.lease.fence, expiresAt: outcome.lease.expiresAt, holder: id },
              });
              if (r.ok) held.push({ model: { id, fence: outcome.lease.fence }, real: r.lease, crashed: false });
            } else if (outcome.status === "rejected") {
              expect(r).toEqual({
                ok: false,
                code: outcome.code,
                message: outcome.message,
                retryAfterMs: outcome.retryAfterMs,
                load: {
                  held: model.leases.size,
                  waiting: model.queue.length,
                  limit: model.recovery ? 0 : CONFIG.limit,
                },
              });
            }
          }
          break;
        }
        case "acquireMany": {
          const ids = o.ttlMs.map(() => `m${seq++}`);
          const r = await stub.acquireMany(ids.map((id, i) => ({ holder: id, ttlMs: o.ttlMs[i] })));
          if (!r.ok) expect.unreachable(`acquireMany failed: ${r.code}`);
          expect(r.results).toHaveLength(ids.length);
          for (const [i, id] of ids.entries()) {
            const { outcome, effects } = acquire(
              model,
              { leaseId: id, holder: id, ttlMs: o.ttlMs[i], queue: false },
              now,
            );
            await settle(effects, now);
            const got = r.results[i];
            if (outcome.status === "granted") {
              expect(got).toMatchObject({
                ok: true,
                lease: { fence: outcome.lease.fence, expiresAt: outcome.lease.expiresAt, holder: id },
              });
              if (got?.ok) held.push({ model: { id, fence: outcome.lease.fence }, real: got.lease, crashed: false });
            } else {
              // Not free now: nothing queued, nothing counted; the client would send it on its own.
              expect(outcome.status).toBe("deferred");
              expect(got).toBeNull();
            }
          }
          break;
        }
        case "releaseMany": {
          const live = held.filter((h) => !h.crashed);
          if (live.length === 0) break;
          // The same lease may be picked twice: the second release finds it gone.
          const picked = o.picks.map((p, i) => ({ h: live[p % live.length]!, stale: o.stale[i]! }));
          const refs = picked.map(({ h, stale }) => ({
            ...leaseRef(h.real),
            fence: stale ? h.real.fence + 1 : h.real.fence,
          }));
          const r = await stub.releaseMany(refs);
          if (!r.ok) expect.unreachable(`releaseMany failed: ${r.code}`);
          for (const [i, { h }] of picked.entries()) {
            const { outcome, effects } = release(model, { ...refs[i]!, leaseId: h.model.id }, now, verifyModel);
            if (outcome.status === "ok") {
              expect(r.results[i]).toEqual({ ok: true, released: true });
              if (held.includes(h)) held.splice(held.indexOf(h), 1);
            } else {
              expect(r.results[i]).toMatchObject({ ok: false, code: outcome.code });
            }
            await settle(effects, now);
          }
          break;
        }
        case "release":
        case "renew": {
          const live = held.filter((h) => !h.crashed);
          if (live.length === 0) break;
          const h = live[o.pick % live.length]!;
          const stale = o.kind === "release" && o.stale;
          const fence = stale ? h.model.fence + 1 : h.model.fence;
          if (o.kind === "release") {
            // As the client sends it: with the expiry it was last told and its token.
            const ref = { ...leaseRef(h.real), fence: stale ? h.real.fence + 1 : h.real.fence };
            const r = await stub.release(ref);
            const { outcome, effects } = release(model, { ...ref, leaseId: h.model.id, fence }, now, verifyModel);
            if (outcome.status === "ok") {
              expect(r).toEqual({ ok: true, released: true });
              if (held.includes(h)) held.splice(held.indexOf(h), 1);
            } else {
              expect(r).toMatchObject({ ok: false, code: outcome.code });
            }
            await settle(effects, now);
          } else {
            const ref = leaseRef(h.real);
            const r = await stub.renew(ref, o.ttlMs);
            const { outcome, effects } = renew(
              model,
              { ...ref, leaseId: h.model.id, fence },
              now,
              o.ttlMs,
              verifyModel,
            );
            if (outcome.status === "ok") {
              expect(r).toMatchObject({ ok: true, lease: { fence: h.real.fence, expiresAt: outcome.lease.expiresAt } });
              if (r.ok) h.real = r.lease;
            } else expect(r).toMatchObject({ ok: false, code: outcome.code });
            await settle(effects, now);
          }
          break;
        }
        case "forged": {
          // An id nobody was granted frees nothing, whatever fence it names.
          // (In a recovery window, a release naming an earlier fence is accepted: it frees nothing either.)
          const r = await stub.release({ leaseId: crypto.randomUUID(), fence: o.fence });
          const { outcome, effects } = release(model, { leaseId: `forged-${seq++}`, fence: o.fence }, now);
          expect(r).toMatchObject(
            outcome.status === "ok" ? { ok: true, released: true } : { ok: false, code: "LEASE_NOT_FOUND" },
          );
          await settle(effects, now);
          break;
        }
        case "crash": {
          // The holder dies: it never calls again; only expiry can return its slot.
          if (held.length > 0) held[o.pick % held.length]!.crashed = true;
          break;
        }
        case "advance": {
          offset += o.ms;
          await advanceBoth();
          break;
        }
        case "restart": {
          restarts++;
          await runInDurableObject(stub, (_, state) => state.abort("restart")).catch(() => {});
          stub = env.COORDINATOR_DO.getByName(name);
          // Queued callers get an error (the client turns it into retryable COORDINATOR_UNAVAILABLE).
          for (const p of pending.values()) {
            await p.done;
            expect(p.result).toBeUndefined();
            expect(p.error).toBeDefined();
          }
          pending.clear();
          queued = [];
          // The restarted object forgot its leases. What it kept: fences only grow; counters may
          // lose the last second, never gain; and its recovery window covers every lease that may
          // still be alive (fence below the recovery floor, expiry before the window ends).
          const restarted = await runInDurableObject(stub, (instance) => {
            const pool = (instance as unknown as { pool: PoolState }).pool;
            const r = pool.recovery;
            return {
              snap: snapshot(pool),
              recovery: r && { ...r, tombstones: new Set(r.tombstones) },
              held: pool.leases.size,
            };
          });
          expect(restarted.held).toBe(0);
          expect(restarted.snap.nextFence).toBeGreaterThanOrEqual(model.nextFence);
          for (const k of Object.keys(model.counters) as Array<keyof typeof model.counters>) {
            expect(restarted.snap.counters[k]).toBeLessThanOrEqual(model.counters[k]);
          }
          for (const l of model.leases.values()) {
            expect(restarted.recovery).toBeDefined();
            expect(l.fence).toBeLessThan(restarted.recovery!.recoverBelowFence);
            expect(l.expiresAt).toBeLessThanOrEqual(restarted.recovery!.until);
          }
          model = restore(CONFIG, restarted.snap, []);
          model.recovery = restarted.recovery;
          await settle(tick(model, now), now);
          break;
        }
      }
      await check();
    }

    // Let time run out: every crashed holder's slot comes back, every waiter is settled.
    offset += 100_000;
    await advanceBoth();
    await check();
    expect(pending.size).toBe(0);
    const s = await stub.stats();
    expect(s).toMatchObject({ held: 0, waiting: 0 });
    // No slot lost: every lease ever granted was released or reaped (a restart may lose counts).
    const c = s.counters;
    if (!ops.some((o) => o.kind === "restart")) expect(c.granted).toBe(c.released + c.expired);
  } finally {
    Date.now = realNow;
  }
}

describe("ConnectionCoordinator against the core as its model", () => {
  it(`answers exactly as the core over ${DO_RUNS} generated sequences`, { timeout: 120_000 }, async () => {
    const started = performance.now();
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: MAX_STEPS, size: "max" }), (ops) => runSequence(ops)),
      { numRuns: DO_RUNS },
    );
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `[reliability] DO model: ${DO_RUNS} sequences, ${totalSteps} steps checked, ${restarts} restarts, ${seconds.toFixed(1)} s`,
    );
  });
});
