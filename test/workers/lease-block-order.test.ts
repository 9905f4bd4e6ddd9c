import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { ShardedLeases, createIsolateShards } from "../../src/client/sharded-leases.ts";
import type { Coordinator } from "../../src/engine/coordinator.ts";

/**
 * The lease block against the real coordinator object in workerd: a busy isolate whose block holds
 * the whole limit (LEASE_LIMIT is 3 here, the lease TTL 30 s) and keeps serving its own requests,
 * while a caller of another isolate waits at the coordinator.
 */
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let seq = 0;

async function busyIsolateAndOneCaller(yieldToQueue: boolean) {
  const pool = `block-order-${++seq}`;
  const stub = () => env.COORDINATOR_DO.getByName(pool);
  const isolate = createIsolateShards({ shards: 1, limit: 3, maxBlock: 3, idleMs: 20, yieldToQueue });
  const pending: Array<Promise<unknown>> = [];
  const client = () =>
    new ShardedLeases({ coordinators: [stub()], isolate, waitMs: 3000, waitUntil: (p) => void pending.push(p) });
  // The busy isolate takes every slot, then keeps four workers going on them.
  const first = await Promise.all([0, 1, 2].map(() => client().acquire()));
  await Promise.all(first.map((l) => client().release(l)));
  let stop = false;
  const served = { n: 0 };
  const worker = async () => {
    while (!stop) {
      const lease = await client().acquire();
      await sleep(5);
      await client().release(lease);
      served.n++;
    }
  };
  const workers = [0, 1, 2, 3].map(() => worker());
  await sleep(20);
  // Another isolate's caller: one acquire of its own, queued at the full coordinator.
  const started = Date.now();
  const other = await new Leases(stub()).acquire({ waitMs: 1000 }).then(
    (lease) => ({ ok: true as const, lease, waitedMs: Date.now() - started }),
    (error: { code: string }) => ({ ok: false as const, code: error.code, waitedMs: Date.now() - started }),
  );
  stop = true;
  await Promise.all(workers);
  if (other.ok) await stub().release({ leaseId: other.lease.id, fence: other.lease.fence });
  // Idle block leases go back after idleMs: then the pool is empty again.
  for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
  return { other, served: served.n, held: (await stub().stats()).held };
}

describe("lease block in workerd: global order across isolates", () => {
  it("hands finished leases back while another isolate's caller waits, so that caller is served in about staleAfterMs", async () => {
    const r = await busyIsolateAndOneCaller(true);
    expect(r.other).toMatchObject({ ok: true });
    expect(r.other.waitedMs).toBeLessThan(500);
    expect(r.served).toBeGreaterThan(0);
    expect(r.held).toBe(0);
  });

  it("keeping leases while young (yieldToQueue false), the busy isolate starves the other caller past its deadline", async () => {
    const r = await busyIsolateAndOneCaller(false);
    expect(r.other).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
    expect(r.held).toBe(0);
  });
});

/** A block of `maxBlock` for a fresh pool (LEASE_LIMIT 3, TTL 30 s), and a client per request. */
function freshBlock(maxBlock: number, idleMs = 20) {
  const pool = `block-holes-${++seq}`;
  const stub = () => env.COORDINATOR_DO.getByName(pool);
  const isolate = createIsolateShards({ shards: 1, limit: 3, maxBlock, idleMs });
  const pending: Array<Promise<unknown>> = [];
  const client = () =>
    new ShardedLeases({ coordinators: [stub()], isolate, waitMs: 3000, waitUntil: (p) => void pending.push(p) });
  return { stub, isolate, client, pending };
}

/** Whether `p` has settled after the microtasks and timers now due have run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  await sleep(0);
  return done;
}

describe("lease block in workerd: a slot is never shared", () => {
  it("a repeated or stale release by an earlier holder neither frees the lease nor hands it to a third request", async () => {
    const { stub, isolate, client } = freshBlock(1, 1000);
    const a = await client().acquire();
    // B and C wait in the isolate: the block holds its one lease.
    const b = client().acquire();
    const c = client().acquire();
    // No I/O since the grant: the coordinator's report that nobody waits is fresh, so A's lease goes to B.
    await client().release(a);
    const leaseB = await b;
    expect(leaseB.id).toBe(a.id);
    // A releases again, then a copy of its lease arrives late: B still holds the slot, C gets nothing.
    await expect(client().release(a)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
    await expect(client().release({ ...a })).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
    // Without its generation (a copy that lost it), a block lease is not sent to the coordinator either.
    const { generation: _, ...bare } = a;
    await expect(client().release(bare)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(await settled(c)).toBe(false);
    expect((await stub().stats()).held).toBe(1);
    // B's own release hands it on.
    await client().release(leaseB);
    const leaseC = await c;
    await client().release(leaseC);
    await expect(client().release(leaseB)).rejects.toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(isolate.block?.waiting).toEqual([]);
  });
});

describe("lease block in workerd: a slot is never stranded", () => {
  it("two requests that vanish holding their block leases do not block the isolate past the leases' lifetime", async () => {
    const { stub, client, pending } = freshBlock(2);
    // Two requests torn down while holding (CPU limit, waitUntil cap): they never release.
    const calledAt = [Date.now()];
    const vanished = [await client().acquire({ ttlMs: 300 })];
    calledAt.push(Date.now());
    vanished.push(await client().acquire({ ttlMs: 300 }));
    // When they end as the isolate counts (their holders, counting from their calls, would have stopped by then).
    const firstEnd = Math.min(...vanished.map((l, i) => calledAt[i]! + (l.validForMs ?? 0)));
    // The block is full; a request now waits in the isolate while the coordinator has a free slot.
    const started = Date.now();
    const lease = await client().acquire({ waitMs: 3000, ttlMs: 30_000 });
    // Served once a vanished lease's lifetime was over (not before: the block never exceeds its
    // bound), and long before its deadline.
    expect(Date.now()).toBeGreaterThanOrEqual(firstEnd);
    expect(Date.now() - started).toBeLessThan(2500);
    // A request that comes later is served at once: the block has room again.
    const later = await client().acquire({ waitMs: 1000 });
    expect((await stub().stats()).held).toBeLessThanOrEqual(3);
    await client().release(lease);
    await client().release(later);
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});

describe("lease block in workerd: the lifetime a waiting request is given", () => {
  it("is counted from the request's own call, its wait in the block included, as its holder counts", async () => {
    const { stub, client, pending } = freshBlock(1, 1000);
    const a = await client().acquire();
    // b waits in the isolate 300 ms behind a (the block holds its one lease).
    const bCalledAt = Date.now();
    const b = client().acquire();
    await sleep(300);
    // The report is stale: a's lease goes back and an acquire goes out for b, its lease living the TTL (30 s) from now.
    const askedAt = Date.now();
    await client().release(a);
    const leaseB = await b;
    const gotAt = Date.now();
    // b's holder adds validForMs to when it called: its lease ends 30 s after the acquire sent for
    // it, not 300 ms before that (a request long in a backlog would take a lease it counts as
    // nearly or already over), and never later than the block counts.
    expect(bCalledAt + leaseB.validForMs!).toBeGreaterThanOrEqual(askedAt + 30_000 - 30);
    expect(bCalledAt + leaseB.validForMs!).toBeLessThanOrEqual(gotAt + 30_000);
    await client().release(leaseB);
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});

describe("lease block in workerd: a renewed lease", () => {
  it("keeps its generation and its new end: not reaped while renewed, released by its holder", async () => {
    const { stub, isolate, client, pending } = freshBlock(1);
    const lease = await client().acquire({ ttlMs: 300 });
    const renewed = await client().renew(lease, 30_000);
    expect(renewed.generation).toBe(lease.generation);
    await sleep(400);
    // Past the end it was granted with: a call reaps, and the renewed lease stays in use.
    await expect(client().acquire({ waitMs: 0 })).rejects.toMatchObject({ code: "ACQUIRE_TIMEOUT" });
    expect(isolate.block?.inUse.size).toBe(1);
    await client().release(renewed);
    expect(isolate.block?.inUse.size).toBe(0);
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});

describe("lease block in workerd: a backlog older than the last report", () => {
  it("is served from the block however old the report, when the coordinator's queue was empty; a newer request is not", async () => {
    const { stub, client, pending } = freshBlock(3, 1000);
    // Nobody else uses this pool: the coordinator's queue stays empty.
    const [a, b, c] = [await client().acquire(), await client().acquire(), await client().acquire()];
    // The block is full: d, e and f wait in the isolate.
    const [d, e, f] = [client().acquire(), client().acquire(), client().acquire()];
    await sleep(100);
    // Every report is stale now, and none was asked for after d came: a's lease goes back and d
    // asks the coordinator. That acquire, sent after e and f came, finds the queue empty.
    await client().release(a);
    const leaseD = await d;
    expect(leaseD.id).not.toBe(a.id);
    await sleep(100);
    // Stale again, but e and f have waited since before that acquire was sent: whoever waits at
    // the coordinator now came after them. b's and c's leases are handed on in the isolate.
    await client().release(b);
    expect((await e).id).toBe(b.id);
    await client().release(c);
    const leaseF = await f;
    expect(leaseF.id).toBe(c.id);
    // g comes after that acquire was sent: the old report covers it no longer. d's lease goes back.
    const g = client().acquire();
    await sleep(100);
    await client().release(leaseD);
    const leaseG = await g;
    expect(leaseG.id).not.toBe(leaseD.id);
    // Never more than the limit, nor than the block's bound.
    expect((await stub().stats()).held).toBeLessThanOrEqual(3);
    for (const lease of [await e, leaseF, leaseG]) await client().release(lease);
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});

describe("lease block in workerd: a lease going back while a local request waits", () => {
  it("rides on the acquire sent for that request: one coordinator call, not two", async () => {
    const pool = `block-carry-${++seq}`;
    const stub = () => env.COORDINATOR_DO.getByName(pool);
    // The real object, with the calls made to it counted.
    const calls = { acquire: 0, release: 0 };
    const counted = (): Coordinator => {
      const s = stub();
      return {
        acquire: (options) => {
          calls.acquire++;
          return s.acquire(options);
        },
        release: (ref) => {
          calls.release++;
          return s.release(ref);
        },
        renew: (ref, ttlMs) => s.renew(ref, ttlMs),
        stats: () => s.stats(),
      };
    };
    const isolate = createIsolateShards({ shards: 1, limit: 3, maxBlock: 1, idleMs: 1000 });
    const pending: Array<Promise<unknown>> = [];
    const client = () =>
      new ShardedLeases({ coordinators: [counted()], isolate, waitMs: 3000, waitUntil: (p) => void pending.push(p) });
    const a = await client().acquire();
    const b = client().acquire();
    await sleep(100);
    // The report is stale and older than b: a's lease goes back, and an acquire goes out for b.
    await client().release(a);
    const leaseB = await b;
    expect(leaseB.id).not.toBe(a.id);
    expect(calls).toEqual({ acquire: 2, release: 0 });
    // a's release went first, in the same call: the coordinator counts b's lease only.
    const stats = await stub().stats();
    expect(stats.counters.released).toBe(1);
    expect(stats.held).toBe(1);
    await client().release(leaseB);
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});

describe("lease block in workerd: global order held within the bound", () => {
  it("a stream of one-at-a-time requests does not reuse its lease past ~50 ms while callers wait at the coordinator", async () => {
    const { stub, client, pending } = freshBlock(2, 20);
    // Another isolate holds two of the three slots for the whole test.
    const others = new Leases(stub());
    const held = [await others.acquire({ ttlMs: 30_000 }), await others.acquire({ ttlMs: 30_000 })];
    let stop = false;
    const uses: Array<{ id: string; at: number }> = [];
    const stream = (async () => {
      while (!stop) {
        const lease = await client().acquire({ waitMs: 3000, ttlMs: 30_000 });
        uses.push({ id: lease.id, at: Date.now() });
        await sleep(2);
        await client().release(lease);
      }
    })();
    await sleep(100);
    // Three callers of other isolates queue at the full coordinator; each holds its slot 20 ms.
    const queuedAt = Date.now();
    const served: number[] = [];
    const waiters = [0, 1, 2].map(async () => {
      const lease = await new Leases(stub()).acquire({ waitMs: 2000, ttlMs: 30_000 });
      served.push(Date.now());
      await sleep(20);
      await stub().release({ leaseId: lease.id, fence: lease.fence });
    });
    const outcome = await Promise.allSettled(waiters);
    stop = true;
    await stream;
    expect(outcome.map((o) => o.status)).toEqual(["fulfilled", "fulfilled", "fulfilled"]);
    // While they waited, a lease the stream used before was handed on again only within the bound
    // (50 ms without a report, plus round trips on this loaded machine).
    const lastServed = Math.max(...served);
    const reusedWhileQueued = uses.filter(
      (u, i) => i > 0 && u.id === uses[i - 1]!.id && u.at > queuedAt && u.at < lastServed,
    );
    const lastReuse = Math.max(queuedAt, ...reusedWhileQueued.map((u) => u.at));
    expect(lastReuse - queuedAt).toBeLessThan(300);
    for (const lease of held) await stub().release({ leaseId: lease.id, fence: lease.fence });
    for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
    expect((await stub().stats()).held).toBe(0);
  });
});
