import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { type Coordinator, DEFAULT_CLAIM_MS, Leases } from "../../src/client/leases.ts";
import { ReleaseOutbox } from "../../src/client/outbox.ts";
import { MAX_BATCH, leaseRef } from "../../src/core/index.ts";
import { grantNow, restartCoordinator } from "../support/coordinator.ts";

// Pool config of the workerd tests: limit 3, queue cap 5, wait 400 ms.
let poolSeq = 0;
const fresh = () => `batch-test-${++poolSeq}`;

/** The stub, with every call that reaches the object counted by method. */
function counting(name: string) {
  const stub = env.COORDINATOR_DO.getByName(name);
  const calls: Record<string, number> = {};
  const count = (method: string) => {
    calls[method] = (calls[method] ?? 0) + 1;
  };
  const coordinator: Coordinator = {
    acquire: (o) => {
      count("acquire");
      return stub.acquire(o);
    },
    release: (r) => {
      count("release");
      return stub.release(r);
    },
    renew: (r, t) => {
      count("renew");
      return stub.renew(r, t);
    },
    stats: () => stub.stats(),
    acquireMany: (list) => {
      count("acquireMany");
      return stub.acquireMany(list);
    },
    releaseMany: (refs) => {
      count("releaseMany");
      return stub.releaseMany(refs);
    },
  };
  return { stub, coordinator, calls };
}

describe("batch calls", () => {
  it("acquireMany grants free slots in order under one commit, defers the rest without queueing or counting them", async () => {
    const name = fresh();
    const stub = env.COORDINATOR_DO.getByName(name);
    await grantNow(stub, "first");
    const r = await stub.acquireMany(["a", "b", "c", "d"].map((holder) => ({ holder })));
    if (!r.ok) throw new Error(r.code);
    expect(r.results.map((x) => (x === null ? null : x.ok && [x.lease.holder, x.lease.fence]))).toEqual([
      ["a", 2],
      ["b", 3],
      null,
      null,
    ]);
    const s = await stub.stats();
    expect(s).toMatchObject({ held: 3, waiting: 0, counters: { granted: 3, rejected: 0, timedOut: 0 } });
    // A restarted object forgot them but grants nothing while they may be alive (it recovers them).
    const restarted = await restartCoordinator(name);
    expect(await restarted.stats()).toMatchObject({ held: 0, recovery: { recovered: 0 } });
    expect(await restarted.acquire({ holder: "e", waitMs: 0 })).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
  });

  it("a bad entry fails alone; a malformed batch fails whole with INVALID_ARGUMENT and changes nothing", async () => {
    const stub = env.COORDINATOR_DO.getByName(fresh());
    const r = await stub.acquireMany([{ holder: "ok" }, { holder: 5 as never }, { ttlMs: -1 }, "x" as never]);
    if (!r.ok) throw new Error(r.code);
    expect(r.results[0]).toMatchObject({ ok: true, lease: { holder: "ok" } });
    for (const x of r.results.slice(1)) expect(x).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    const before = await stub.stats();
    for (const bad of [[], "list", null, { 0: {} }, Array.from({ length: MAX_BATCH + 1 }, () => ({}))]) {
      expect(await stub.acquireMany(bad as never)).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
      expect(await stub.releaseMany(bad as never)).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    }
    expect((await stub.stats()).held).toBe(before.held);
  });

  it("releaseMany answers each lease as release would, in order", async () => {
    const name = fresh();
    const stub = env.COORDINATOR_DO.getByName(name);
    const [a, b] = [await grantNow(stub, "a"), await grantNow(stub, "b")];
    const r = await stub.releaseMany([
      { leaseId: a.id, fence: a.fence },
      { leaseId: a.id, fence: a.fence },
      { leaseId: b.id, fence: b.fence + 1 },
      { leaseId: crypto.randomUUID(), fence: 1 },
    ]);
    if (!r.ok) throw new Error(r.code);
    expect(r.results.map((x) => (x.ok ? "ok" : x.code))).toEqual([
      "ok",
      "LEASE_NOT_FOUND",
      "STALE_FENCE",
      "LEASE_NOT_FOUND",
    ]);
    expect((await stub.stats()).leases.map((l) => l.holder)).toEqual(["b"]);
    // After a restart b's holder renews it back with its token (the object recovers it).
    const restarted = await restartCoordinator(name);
    expect(await restarted.renew(leaseRef(b))).toMatchObject({ ok: true });
    expect((await restarted.stats()).leases.map((l) => l.holder)).toEqual(["recovered"]);
  });
});

describe("Leases coalesces concurrent calls", () => {
  it("concurrent callers beyond the limit: batched grants, the rest queue in order, never above the limit", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    const leases = new Leases(coordinator);
    let inUse = 0;
    let peak = 0;
    // Limit 3, queue cap 5: eight callers all get a slot, five of them after waiting.
    const holders = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const lease = await leases.acquire({ holder: `c${i}`, waitMs: 5000 });
        peak = Math.max(peak, ++inUse);
        await scheduler.wait(5);
        inUse--;
        await leases.release(lease);
        return lease.holder;
      }),
    );
    expect(new Set(holders).size).toBe(8);
    expect(peak).toBeLessThanOrEqual(3);
    expect(await stub.stats()).toMatchObject({
      held: 0,
      waiting: 0,
      counters: { granted: 8, released: 8, rejected: 0, timedOut: 0 },
    });
    // One batch for the eight: three granted at once, the five others queued by single calls.
    expect(calls.acquireMany).toBe(1);
    expect(calls.acquire).toBe(5);
  });

  it("with slots to spare, N concurrent pairs cost far fewer than 2N calls", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    await stub.setLimit(64);
    const leases = new Leases(coordinator);
    await Promise.all(Array.from({ length: 48 }, async () => leases.release(await leases.acquire())));
    const total = Object.values(calls).reduce((a, b) => a + b, 0);
    // All resume from one answer in the same turn: one batch each way.
    expect(calls).toEqual({ acquireMany: 1, releaseMany: 1 });
    expect(total).toBe(2);
    expect((await stub.stats()).counters).toMatchObject({ granted: 48, released: 48 });
  });

  it("a lone caller makes single calls, also when it has to queue", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    const leases = new Leases(coordinator);
    for (let i = 0; i < 3; i++) await leases.release(await leases.acquire());
    expect(calls).toEqual({ acquire: 3, release: 3 });
    const held = [await grantNow(stub), await grantNow(stub), await grantNow(stub)];
    const waiting = leases.acquire({ waitMs: 5000 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    await stub.release({ leaseId: held[0]!.id, fence: held[0]!.fence });
    await leases.release(await waiting);
    // A grant after a wait is claimed with one renewal (see `claimMs`); a grant at once is not.
    expect(calls).toEqual({ acquire: 4, release: 4, renew: 1 });
    for (const l of held.slice(1)) await stub.release({ leaseId: l.id, fence: l.fence });
  });

  it("withLease granted from the queue: work shorter than a third of the claim window makes no claim call", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    const leases = new Leases(coordinator);
    const held = [await grantNow(stub), await grantNow(stub), await grantNow(stub)];
    let lease: { expiresAt: number; grantedAt: number } | undefined;
    const queued = leases.withLease(
      async (scope) => {
        lease = scope.lease;
        await new Promise((r) => setTimeout(r, 20));
      },
      { waitMs: 5000 },
    );
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    await stub.release({ leaseId: held[0]!.id, fence: held[0]!.fence });
    await queued;
    // The work ran under the unclaimed grant (it lives the claim window); its release is all the object heard.
    expect(lease!.expiresAt - lease!.grantedAt).toBe(DEFAULT_CLAIM_MS);
    expect(calls).toEqual({ acquire: 1, release: 1 });
    expect((await stub.stats()).counters).toMatchObject({ released: 2, expired: 0 });
    for (const l of held.slice(1)) await stub.release({ leaseId: l.id, fence: l.fence });
  });

  it("with an outbox, withLease's release rides on the next acquire; with none coming, it goes out after carryMs", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    const background: Array<Promise<unknown>> = [];
    const waitUntil = (p: Promise<unknown>) => void background.push(p);
    const outbox = new ReleaseOutbox(200);
    // Two requests' clients over one outbox, as workerPool makes them in one isolate.
    const first = new Leases(coordinator, { outbox, waitUntil });
    const second = new Leases(coordinator, { outbox, waitUntil });
    await first.withLease(() => {}, { waitUntil });
    expect(calls).toEqual({ acquire: 1 });
    expect((await stub.stats()).held).toBe(1);
    let during: number | undefined;
    await second.withLease(
      async () => {
        during = (await stub.stats()).held;
      },
      { waitUntil },
    );
    // The second acquire carried the first release: the object held only the second lease.
    expect(during).toBe(1);
    expect(calls).toEqual({ acquire: 2 });
    const sentAt = Date.now();
    await Promise.all(background);
    // Nothing came to carry the second release: it went out on its own after carryMs.
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(150);
    expect(calls).toEqual({ acquire: 2, release: 1 });
    expect((await stub.stats()).counters).toMatchObject({ granted: 2, released: 2 });
  });

  it("releases an acquire carried are sent on their own when that acquire's call fails", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    const background: Array<Promise<unknown>> = [];
    const waitUntil = (p: Promise<unknown>) => void background.push(p);
    const outbox = new ReleaseOutbox(1000);
    let down = false;
    const flaky: Coordinator = {
      ...coordinator,
      acquire: (o) => (down ? Promise.reject(new Error("connection reset")) : coordinator.acquire(o)),
    };
    const leases = new Leases(flaky, { outbox, waitUntil, coalesce: false });
    await leases.withLease(() => {}, { waitUntil });
    down = true;
    await expect(leases.acquire()).rejects.toMatchObject({ code: "COORDINATOR_UNAVAILABLE" });
    await Promise.all(background);
    // The outbox no longer held it when its own wait ended: the failed carrier sent it itself.
    expect(calls).toEqual({ acquire: 1, release: 1 });
    expect(await stub.stats()).toMatchObject({ held: 0, counters: { released: 1 } });
  });

  it("callers arriving one by one while a batch is in flight go together in the next batch", async () => {
    const { stub, coordinator, calls } = counting(fresh());
    await stub.setLimit(64);
    const leases = new Leases(coordinator);
    const ticks = async () => {
      for (let i = 0; i < 5; i++) await Promise.resolve();
    };
    const first = Promise.all([leases.acquire(), leases.acquire()]);
    await ticks(); // the first batch is sent; its answer needs I/O, so it is still in flight
    expect(calls).toEqual({ acquireMany: 1 });
    const x = leases.acquire();
    await ticks(); // alone in its turn, but a batch is in flight: x waits for it
    const y = leases.acquire();
    await ticks();
    expect(calls).toEqual({ acquireMany: 1 });
    const all = [...(await first), await x, await y];
    expect(new Set(all.map((l) => l.fence)).size).toBe(4);
    expect(calls).toEqual({ acquireMany: 2 });
    await Promise.all(all.map((l) => leases.release(l)));
  });

  it("a coordinator without batch methods (an older deployment) gets single calls, after one try", async () => {
    const { coordinator, calls } = counting(fresh());
    const missing = (method: string) => () =>
      Promise.reject(new TypeError(`The RPC receiver does not implement the method "${method}".`));
    const old: Coordinator = {
      ...coordinator,
      acquireMany: missing("acquireMany"),
      releaseMany: missing("releaseMany"),
    };
    const leases = new Leases(old);
    const pairs = await Promise.all(Array.from({ length: 4 }, async () => leases.release(await leases.acquire())));
    expect(pairs).toHaveLength(4);
    await leases.release(await leases.acquire());
    expect(calls).toMatchObject({ acquire: 5, release: 5 });
  });

  it("a batch call that fails fails each of its callers with COORDINATOR_UNAVAILABLE, and the next batch goes out", async () => {
    const { coordinator, calls } = counting(fresh());
    let failNext = true;
    const flaky: Coordinator = {
      ...coordinator,
      acquireMany: (list) => {
        if (!failNext) return coordinator.acquireMany!(list);
        failNext = false;
        return Promise.reject(new Error("Durable Object reset because its code was updated."));
      },
    };
    const leases = new Leases(flaky);
    const failed = await Promise.allSettled([leases.acquire(), leases.acquire(), leases.acquire()]);
    expect(failed.map((o) => o.status === "rejected" && (o.reason as { code: string }).code)).toEqual(
      Array(3).fill("COORDINATOR_UNAVAILABLE"),
    );
    // Retrying, as COORDINATOR_UNAVAILABLE invites: batching still works.
    const granted = await Promise.all([leases.acquire(), leases.acquire(), leases.acquire()]);
    expect(granted.map((l) => l.fence)).toEqual([1, 2, 3]);
    expect(calls).toEqual({ acquireMany: 1 });
    await Promise.all(granted.map((l) => leases.release(l)));
  });

  it("queued callers keep their deadlines and codes through the client", async () => {
    const { stub, coordinator } = counting(fresh());
    const held = [await grantNow(stub), await grantNow(stub), await grantNow(stub)];
    const leases = new Leases(coordinator);
    const outcomes = await Promise.allSettled(Array.from({ length: 7 }, () => leases.acquire({ waitMs: 100 })));
    const codes = outcomes.map((o) => (o.status === "rejected" ? (o.reason as { code: string }).code : "granted"));
    // Queue cap 5: five wait and time out, two are shed.
    expect(codes.filter((c) => c === "ACQUIRE_TIMEOUT")).toHaveLength(5);
    expect(codes.filter((c) => c === "QUEUE_FULL")).toHaveLength(2);
    expect((await stub.stats()).counters).toMatchObject({ timedOut: 5, rejected: 2 });
    for (const l of held) await stub.release({ leaseId: l.id, fence: l.fence });
  });
});
