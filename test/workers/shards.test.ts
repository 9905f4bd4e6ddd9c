import { createExecutionContext, runInDurableObject, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type ShardedGrant, ShardedLeases, createIsolateShards, shardName } from "../../src/client/sharded-leases.ts";
import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { type LeaseGrant, type PoolStats, isLeaseError, leaseRef } from "../../src/core/index.ts";
import { handle } from "../../examples/pitches/src/app.ts";
import { depsFor } from "../../examples/pitches/src/worker.ts";

/**
 * Sharding and batching in real workerd, against the real coordinator objects: the same
 * invariants as the single coordinator. LEASE_LIMIT is 3 and LEASE_MAX_QUEUE 5 here
 * (vitest.workers.config.ts): the pool's root (the object named after the pool) owns the 3 slots
 * and shares them among the shards `${pool}#i` by demand.
 */
const LIMIT = 3;
let poolSeq = 0;

function shardedPool(count: number, block = 0, idleMs = 20) {
  const pool = `shards-test-${++poolSeq}`;
  const names = Array.from({ length: count }, (_, i) => shardName(pool, i, count));
  const stubs = () => names.map((n) => env.COORDINATOR_DO.getByName(n));
  const isolate = createIsolateShards({ shards: count, maxBlock: block, idleMs });
  const pending: Array<Promise<unknown>> = [];
  // A client as one request builds it: fresh stubs, the isolate's shared state.
  const client = () =>
    new ShardedLeases({
      coordinators: stubs(),
      isolate,
      waitMs: 400,
      waitUntil: (p) => void pending.push(p),
      reconnect: (i) => env.COORDINATOR_DO.getByName(names[i]!),
    });
  const root = () => env.COORDINATOR_DO.getByName(pool);
  // The layout the root plans for, as LEASE_SHARDS in its env or an operator would set it.
  const planned = root().setLayout({ count, split: "demand" });
  return {
    planned,
    pool,
    names,
    stubs,
    root,
    isolate,
    leases: client(),
    client,
    pending,
  };
}

async function allStats(stubs: ReturnType<ReturnType<typeof shardedPool>["stubs"]>): Promise<PoolStats[]> {
  return Promise.all(stubs.map((s) => s.stats()));
}

/** The root's accounts: every reserve (what a shard may hold until it reports) sums to at most the limit. */
async function checkShares(p: { root: () => DurableObjectStub<ConnectionCoordinator> }): Promise<PoolStats> {
  const root = await p.root().stats();
  const shards = root.shares?.shards ?? [];
  expect(shards.reduce((a, s) => a + s.reserve, 0)).toBeLessThanOrEqual(LIMIT);
  expect(shards.reduce((a, s) => a + s.share, 0)).toBeLessThanOrEqual(LIMIT);
  return root;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * `requests` concurrent acquire → hold → release against the sharded client while every shard's
 * stats are sampled: the sum of held never exceeds the limit, no shard exceeds its part, every
 * request is answered (lease or ACQUIRE_TIMEOUT/QUEUE_FULL) by its deadline.
 */
async function load(p: ReturnType<typeof shardedPool>, requests: number, waitMs: number) {
  let sampling = true;
  let samples = 0;
  let peak = 0;
  const sampler = (async () => {
    while (sampling) {
      const [all] = await Promise.all([allStats([...p.stubs(), p.root()]), checkShares(p)]);
      const held = all.reduce((a, s) => a + s.held, 0);
      expect(held).toBeLessThanOrEqual(LIMIT);
      peak = Math.max(peak, held);
      samples++;
      await sleep(2);
    }
  })();
  const outcomes: string[] = [];
  const late: number[] = [];
  await Promise.all(
    Array.from({ length: requests }, async (_, i) => {
      // Arrivals spread over ~200 ms: more than the 3 slots can serve at once, so some queue and some time out.
      await sleep((i * 4) % 200);
      const started = Date.now();
      let lease: LeaseGrant | undefined;
      try {
        lease = await p.leases.acquire({ holder: `r${i}`, waitMs });
      } catch (error) {
        outcomes.push(isLeaseError(error) ? error.code : String(error));
      }
      // Answered by the deadline (a little slack for a loaded machine's timers and RPCs).
      if (Date.now() - started > waitMs + 250) late.push(Date.now() - started);
      if (lease) {
        outcomes.push("granted");
        await sleep(3 + (i % 5) * 3);
        await p.leases.release(lease);
      }
    }),
  );
  sampling = false;
  await sampler;
  expect(late).toEqual([]);
  expect(outcomes.every((o) => o === "granted" || o === "ACQUIRE_TIMEOUT" || o === "QUEUE_FULL")).toBe(true);
  return { granted: outcomes.filter((o) => o === "granted").length, samples, peak };
}

/** No slot lost: once blocks idle out, every shard holds nothing and everything granted came back. */
async function drained(p: ReturnType<typeof shardedPool>, countersKept = true) {
  await expect
    .poll(async () => (await allStats(p.stubs())).reduce((a, s) => a + s.held + s.waiting, 0), { timeout: 3000 })
    .toBe(0);
  await Promise.all(p.pending);
  const all = await allStats(p.stubs());
  // Counters live in memory: after a restart only held = 0 speaks for the slots.
  if (countersKept) for (const s of all) expect(s.counters.granted).toBe(s.counters.released + s.counters.expired);
  return all;
}

describe("sharded coordinator in workerd", () => {
  it("the root shares the limit: a shard's share comes from its demand, and the shares sum to the limit", async () => {
    const p = shardedPool(2);
    await p.planned;
    // A shard starts with no share: its first caller waits one report to the root for one.
    const a = await p.leases.acquire({ waitMs: 5000 });
    const b = await p.leases.acquire({ waitMs: 5000 });
    const c = await p.leases.acquire({ waitMs: 5000 });
    await expect(p.leases.acquire({ waitMs: 300 })).rejects.toMatchObject({ code: "ACQUIRE_TIMEOUT" });
    const all = await allStats(p.stubs());
    expect(all.reduce((x, s) => x + s.held, 0)).toBe(3);
    // Each shard shows its share; the root shows every shard's share and demand.
    for (const s of all) expect(s.share!.share).toBeGreaterThanOrEqual(s.held);
    const root = await checkShares(p);
    expect(root.shares).toMatchObject({ limit: 3, layout: { count: 2, split: "demand" } });
    expect(root.shares!.shards.map((s) => s.shard).sort()).toEqual(["0", "1", "root"]);
    // A lease remembers its shard: release and renew go to the object that granted it.
    const renewed = await p.leases.renew(b, 60_000);
    expect(renewed.shard).toBe(b.shard);
    for (const l of [a, b, c]) await p.leases.release(l);
    expect((await allStats(p.stubs())).map((s) => s.held)).toEqual([0, 0]);
    const merged = await p.leases.stats();
    expect(merged).toMatchObject({ held: 0, waiting: 0 });
    expect(merged.shards).toHaveLength(2);
  });

  it("a shard's share and a root's accounts survive restarts; no caller's argument changes a share", async () => {
    const p = shardedPool(3);
    await p.planned;
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await p.leases.acquire({ waitMs: 5000 }));
    const before = await allStats(p.stubs());
    // Restart every shard and the root: each shard enforces the share it kept, the root counts every reserve.
    for (const stub of [...p.stubs(), p.root()])
      await runInDurableObject(stub, (_, state) => state.abort("restart")).catch(() => {});
    const after = await allStats(p.stubs());
    expect(after.map((s) => s.share?.share)).toEqual(before.map((s) => s.share?.share));
    const root = await checkShares(p);
    expect(root.shares!.shards.reduce((x, s) => x + s.reserve, 0)).toBe(3);
    // Holders re-register their leases (the heartbeat), then give them back.
    const leases = p.client();
    for (const l of held) await leases.renew(l, 30_000);
    for (const l of held) await leases.release(l);
    // An older client's `shard` argument is ignored: it no longer re-splits anything.
    const shard0 = p.stubs()[0]!;
    const r = await shard0.acquire({ waitMs: 0, shard: { index: 0, count: 1 } } as never);
    if (r.ok) await shard0.release(leaseRef(r.lease));
    expect((await shard0.stats()).share!.share).toBeLessThanOrEqual(3);
    await checkShares(p);
    // A shard's limit is its share: an operator sets the pool's limit on the root.
    expect(await shard0.setLimit(10)).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    expect(await p.root().setLimit(2)).toMatchObject({ ok: true, limit: 2 });
    expect((await p.root().stats()).shares!.limit).toBe(2);
    await p.root().setLimit(null);
    // A bad layout is refused and changes nothing.
    for (const bad of [null as never, { count: 0 }, { count: 2, split: "random" }, { count: 1.5 }]) {
      if (bad === null) continue;
      expect(await p.root().setLayout(bad as never), JSON.stringify(bad)).toMatchObject({
        ok: false,
        code: "INVALID_ARGUMENT",
      });
    }
    expect(await shard0.setLayout({ count: 2, split: "demand" })).toMatchObject({
      ok: false,
      code: "INVALID_ARGUMENT",
    });
    expect((await p.root().stats()).shares!.layout).toEqual({ count: 3, split: "demand" });
    await drained(p, false);
  });

  it("holds the global limit under concurrent load; every request answered by its deadline; no slot lost", async () => {
    const p = shardedPool(3);
    await p.planned;
    const r = await load(p, 60, 250);
    // Every slot served someone (4–18 requests in runs on a loaded 2-core machine, more when quiet).
    expect(r.granted).toBeGreaterThanOrEqual(LIMIT);
    expect(r.samples).toBeGreaterThan(3);
    const all = await drained(p);
    expect(all.reduce((a, s) => a + s.counters.granted, 0)).toBe(r.granted);
  });

  it("with batching: same invariants, fewer coordinator calls than requests, idle leases go back", async () => {
    const p = shardedPool(3, 2, 20);
    await p.planned;
    const r = await load(p, 60, 250);
    // Each cold shard's first caller waits one report to the root for a share; every slot served someone.
    expect(r.granted).toBeGreaterThanOrEqual(LIMIT);
    const all = await drained(p);
    const coordinatorGrants = all.reduce((a, s) => a + s.counters.granted, 0);
    // Block leases served several requests each: fewer grants at the coordinators than requests served.
    expect(coordinatorGrants).toBeLessThan(r.granted);
    expect(p.isolate.block).toMatchObject({ idle: [], inUse: new Map(), asks: new Map(), waiting: [] });
  });

  it("a block lease is not handed on twice, and an old one goes back to its shard instead of being reused", async () => {
    const p = shardedPool(3, 1, 20);
    await p.planned;
    const lease = await p.leases.acquire({ ttlMs: 30_000 });
    await p.leases.release(lease);
    await expect(p.leases.release(lease)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
    // Reused from the block: the same lease, no new grant.
    const again = await p.leases.acquire();
    expect(again.id).toBe(lease.id);
    // Time-travel past a quarter of its TTL: too old to hand on, so it is released to its shard.
    const realNow = Date.now;
    Date.now = () => realNow() + 10_000;
    try {
      await p.leases.release(again);
    } finally {
      Date.now = realNow;
    }
    expect((await allStats(p.stubs())).reduce((a, s) => a + s.held, 0)).toBe(0);
    expect(p.isolate.block).toMatchObject({ idle: [], inUse: new Map() });
    await drained(p);
  });

  it("the Worker's wiring: LEASE_SHARDS and LEASE_BLOCK through the app and the database, then all shards drain", async () => {
    const pool = `shards-app-${++poolSeq}`;
    const shardedEnv = {
      ...env,
      LEASE_POOL: pool,
      LEASE_SHARDS: "3",
      LEASE_BLOCK: "2",
      LEASE_BLOCK_IDLE_MS: "20",
      LEASE_LOCATION_HINT: "weur",
    };
    const statuses = await Promise.all(
      Array.from({ length: 12 }, async () => {
        const ctx = createExecutionContext();
        const response = await handle(
          new Request("http://example.test/api/pitches/trending?limit=2"),
          depsFor(shardedEnv, ctx),
        );
        await response.arrayBuffer();
        await waitOnExecutionContext(ctx);
        return response.status;
      }),
    );
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(0);
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    const stubs = Array.from({ length: 3 }, (_, i) => env.COORDINATOR_DO.getByName(`${pool}#${i}`));
    await expect
      .poll(async () => (await Promise.all(stubs.map((s) => s.stats()))).reduce((a, s) => a + s.held, 0), {
        timeout: 3000,
      })
      .toBe(0);
    // The object named after the pool alone is not used when sharded.
    expect((await env.COORDINATOR_DO.getByName(pool).stats()).counters.granted).toBe(0);
    const ctx = createExecutionContext();
    const r = await handle(
      new Request("http://example.test/__coordinator/stats", { headers: { authorization: "Bearer test-token" } }),
      depsFor(shardedEnv, ctx),
    );
    // The operator view merges the shards and the root: the root's limit, every shard's share and demand.
    const body = (await r.json()) as PoolStats;
    expect(body).toMatchObject({ limit: 3, held: 0 });
    expect(body.shares!.shards.length).toBeGreaterThan(1);
    // An operator changes the layout on the root; a bad one is refused with a code.
    const layout = async (json: unknown) => {
      const c = createExecutionContext();
      const res = await handle(
        new Request("http://example.test/__coordinator/layout", {
          method: "POST",
          headers: { authorization: "Bearer test-token", "content-type": "application/json" },
          body: JSON.stringify(json),
        }),
        depsFor(shardedEnv, c),
      );
      await waitOnExecutionContext(c);
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    expect(await layout({ count: 3, split: "even" })).toMatchObject({
      status: 200,
      body: { layout: { count: 3, split: "even" } },
    });
    expect((await env.COORDINATOR_DO.getByName(pool).stats()).shares!.layout).toEqual({ count: 3, split: "even" });
    expect(await layout({ count: 0 })).toMatchObject({ status: 400, body: { error: { code: "INVALID_ARGUMENT" } } });
    expect(await layout({ count: null })).toMatchObject({
      status: 200,
      body: { layout: { count: 1, split: "demand" } },
    });
  });

  it("a shard that cannot be reached is left out of the choice for a while: its part is lost, not the limit", async () => {
    const p = shardedPool(2);
    await p.planned;
    // Old stubs, no reconnect: shard 0's stub breaks when the object restarts (a real broken stub).
    const stubs = p.stubs();
    const leases = new ShardedLeases({ coordinators: stubs, isolate: p.isolate, waitMs: 400, random: () => 0 });
    await stubs[0]!.stats();
    await runInDurableObject(stubs[0]!, (_, state) => state.abort("restart")).catch(() => {});
    // random 0 draws shards 0 and 1; equal loads go to 0, which fails: COORDINATOR_UNAVAILABLE.
    await expect(leases.acquire({ waitMs: 0 })).rejects.toMatchObject({ code: "COORDINATOR_UNAVAILABLE" });
    const l = await leases.acquire({ waitMs: 2000 });
    expect(l.shard).toBe(1);
    await leases.release(l);
  });

  it("refuses more shards than a fixed limit's slots with INVALID_CONFIG", () => {
    expect(() => createIsolateShards({ shards: 4, limit: 3 })).toThrow(
      expect.objectContaining({ code: "INVALID_CONFIG" }),
    );
    expect(createIsolateShards({ shards: 4 }).count).toBe(4);
  });
});

type ClientOp =
  | { kind: "acquire" }
  | { kind: "release"; pick: number }
  | { kind: "renew"; pick: number }
  | { kind: "restart"; shard: number };
const clientOp: fc.Arbitrary<ClientOp> = fc.oneof(
  { arbitrary: fc.constant({ kind: "acquire" as const }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant("renew" as const), pick: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("restart" as const), shard: fc.nat({ max: 2 }) }), weight: 1 },
);
const CLIENT_RUNS = 60;

describe("sharded client against the real shard objects, generated sequences", () => {
  it(`keeps every lease it hands out counted on the shard it names, within each part, over ${CLIENT_RUNS} sequences`, {
    timeout: 60_000,
  }, async () => {
    const started = performance.now();
    let steps = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(clientOp, { minLength: 1, maxLength: 20, size: "max" }),
        fc.constantFrom(0, 2),
        async (ops, block) => {
          const p = shardedPool(3, block, 15);
          await p.planned;
          const inUse: ShardedGrant[] = [];
          let leases = p.leases;
          const settle = async () => {
            // In-flight block acquires answer at once (waitMs 0): wait for them before comparing.
            await expect.poll(() => p.isolate.block?.asks.size ?? 0).toBe(0);
          };
          for (const o of ops) {
            if (o.kind === "acquire") {
              try {
                inUse.push(await leases.acquire({ waitMs: 0 }));
              } catch (error) {
                expect(
                  isLeaseError(error) &&
                    ["ACQUIRE_TIMEOUT", "QUEUE_FULL", "COORDINATOR_UNAVAILABLE"].includes(error.code),
                ).toBe(true);
              }
            } else if (o.kind === "release" && inUse.length > 0) {
              await leases.release(inUse.splice(o.pick % inUse.length, 1)[0]!);
            } else if (o.kind === "renew" && inUse.length > 0) {
              const l = inUse[o.pick % inUse.length]!;
              expect((await leases.renew(l, 30_000)).shard).toBe(l.shard);
            } else if (o.kind === "restart") {
              await runInDurableObject(p.stubs()[o.shard]!, (_, state) => state.abort("restart")).catch(() => {});
              // A stub does not outlive its object; in a Worker each request brings new ones anyway.
              leases = p.client();
              // The restarted shard forgot its leases; their holders' heartbeats (and the block's) re-register them.
              const idle = (p.isolate.block?.idle ?? []).map((x) => x.lease);
              for (const l of [...inUse, ...idle]) {
                if (l.shard === o.shard)
                  expect(await p.stubs()[o.shard]!.renew(leaseRef(l), 30_000)).toMatchObject({ ok: true });
              }
            }
            await settle();
            const all = await allStats(p.stubs());
            expect(all.reduce((a, s) => a + s.held, 0)).toBeLessThanOrEqual(LIMIT);
            await checkShares(p);
            // Every lease in use is counted by the shard it names (restarts recover them).
            for (const l of inUse) expect(all[l.shard]!.leases.map((x) => x.idPrefix)).toContain(l.id.slice(0, 8));
            // Nothing is held that neither a request nor the block accounts for.
            const accounted = inUse.length + (p.isolate.block?.idle.length ?? 0);
            expect(all.reduce((a, s) => a + s.held, 0)).toBeLessThanOrEqual(accounted);
            steps++;
          }
          for (const l of inUse) await leases.release(l);
          await drained(p, !ops.some((o) => o.kind === "restart"));
        },
      ),
      { numRuns: CLIENT_RUNS },
    );
    console.log(
      `[reliability] sharded client model: ${CLIENT_RUNS} sequences, ${steps} steps checked, ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
  });
});

describe("an object the runtime does not tell its name", () => {
  it("takes a caller's name only when it derives the object's own id", async () => {
    const pool = `shards-unnamed-${++poolSeq}`;
    // An id from its string form carries no name: the object is reached, but not told what it is.
    const unnamed = (name: string) =>
      env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromString(env.COORDINATOR_DO.idFromName(name).toString()));
    const shard = unnamed(`${pool}#1`);
    // Another object's name is ignored: the object stays a pool of its own (no share).
    const r = await shard.acquire({ waitMs: 0, object: `${pool}#2` });
    expect((await shard.stats()).share).toBeUndefined();
    if (r.ok) await shard.release(leaseRef(r.lease));
    // Its own name is kept: it is shard 1 of the pool, with no share until the root answers.
    await env.COORDINATOR_DO.getByName(pool).setLayout({ count: 2, split: "demand" });
    const lease = await shard.acquire({ waitMs: 5000, object: `${pool}#1` });
    expect(lease).toMatchObject({ ok: true });
    expect((await shard.stats()).share).toMatchObject({ share: expect.any(Number) });
    const root = await env.COORDINATOR_DO.getByName(pool).stats();
    expect(root.shares!.shards.map((s) => s.shard)).toContain("1");
    if (lease.ok) await shard.release(leaseRef(lease.lease));
  });
});
