import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { codeOf } from "../support/codes.ts";
import { grantNow as grant, restartCoordinator } from "../support/coordinator.ts";

// Every test takes a pool of its own: objects keep their state across tests in a file.
let poolSeq = 0;
const freshPool = () => env.COORDINATOR_DO.getByName(`coordinator-test-${++poolSeq}`);

describe("ConnectionCoordinator in workerd", () => {
  it("grants up to the limit with increasing fences", async () => {
    const stub = freshPool();
    const leases = [await grant(stub, "a"), await grant(stub, "b"), await grant(stub, "c")];
    expect(leases.map((l) => l.fence)).toEqual([1, 2, 3]);
    expect(new Set(leases.map((l) => l.id)).size).toBe(3);
    expect(leases[0]!.id).toMatch(/^[0-9a-f-]{36}$/);
    const s = await stub.stats();
    expect(s).toMatchObject({ limit: 3, held: 3, waiting: 0 });
    expect(s.leases.map((l) => l.holder).sort()).toEqual(["a", "b", "c"]);
  });

  it("wakes queued waiters in arrival order the moment slots free", async () => {
    const stub = freshPool();
    const held = [await grant(stub), await grant(stub), await grant(stub)];
    const order: string[] = [];
    const waiting = ["w1", "w2", "w3"].map((holder) =>
      stub.acquire({ holder, waitMs: 5000 }).then((r) => {
        order.push(holder);
        return r;
      }),
    );
    await expect.poll(async () => (await stub.stats()).waiting).toBe(3);
    for (const l of held) await stub.release({ leaseId: l.id, fence: l.fence });
    const results = await Promise.all(waiting);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(order).toEqual(["w1", "w2", "w3"]);
    const waits = (await stub.stats()).waitTimeMs;
    expect(waits.count).toBe(6);
  });

  it("times a waiter out at its deadline with ACQUIRE_TIMEOUT and the pool's state", async () => {
    const stub = freshPool();
    for (let i = 0; i < 3; i++) await grant(stub);
    const started = Date.now();
    const r = await stub.acquire({ holder: "late", waitMs: 150 });
    const waited = Date.now() - started;
    expect(r).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
    expect(waited).toBeGreaterThanOrEqual(140);
    expect(!r.ok && r.message).toContain("limit 3, 3 held");
    expect(!r.ok && r.retryAfterMs).toBeGreaterThan(0);
    expect((await stub.stats()).counters.timedOut).toBe(1);
  });

  it("sheds at once with QUEUE_FULL when the queue is at its cap", async () => {
    const stub = freshPool();
    for (let i = 0; i < 3; i++) await grant(stub);
    const queued = Array.from({ length: 5 }, () => stub.acquire({ waitMs: 1000 }));
    await expect.poll(async () => (await stub.stats()).waiting).toBe(5);
    const r = await stub.acquire({ waitMs: 1000 });
    expect(r).toMatchObject({ ok: false, code: "QUEUE_FULL" });
    expect((await stub.stats()).counters.rejected).toBe(1);
    await Promise.all(queued);
  });

  it("rejects bad input with INVALID_ARGUMENT and leaves the state unchanged", async () => {
    const stub = freshPool();
    const lease = await grant(stub);
    const before = await stub.stats();
    const bad = [
      stub.acquire({ waitMs: -1 }),
      stub.acquire({ ttlMs: Number.NaN }),
      stub.acquire("nope" as never),
      stub.acquire({ holder: "x".repeat(1000) }),
      stub.release({ leaseId: lease.id, fence: "1" as never }),
      stub.release(null as never),
      stub.renew({ leaseId: lease.id, fence: lease.fence }, -5),
    ];
    for (const r of await Promise.all(bad)) expect(r).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    const after = await stub.stats();
    expect(after.counters).toEqual(before.counters);
    expect(after.held).toBe(1);
  });

  it("a forged id, a stale fence or a double release frees nothing", async () => {
    const stub = freshPool();
    const lease = await grant(stub);
    expect(await stub.release({ leaseId: crypto.randomUUID(), fence: lease.fence })).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence + 1 })).toMatchObject({ code: "STALE_FENCE" });
    expect((await stub.stats()).held).toBe(1);
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence })).toEqual({ ok: true, released: true });
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence })).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect((await stub.stats()).counters.released).toBe(1);
  });

  it("honors live leases after the object restarts, and never reuses a fence", async () => {
    let stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    const a = await grant(stub, "a");
    await grant(stub, "b");
    stub = await restartCoordinator(name);
    const s = await stub.stats();
    expect(s.held).toBe(2);
    expect(s.leases.map((l) => l.holder).sort()).toEqual(["a", "b"]);
    expect(await stub.release({ leaseId: a.id, fence: a.fence })).toEqual({ ok: true, released: true });
    expect((await grant(stub, "c")).fence).toBe(3);
    stub = await restartCoordinator(name);
    expect((await stub.stats()).held).toBe(2);
  });

  it("keeps grants that share one batched write durable across a restart", async () => {
    let stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    // Concurrent calls land in one group commit; each is answered only after its row is written.
    const granted = await Promise.all(["a", "b", "c"].map((holder) => stub.acquire({ holder })));
    const leases = granted.map((r) => {
      if (!r.ok) throw new Error(`expected a grant, got ${r.code}`);
      return r.lease;
    });
    const waiter = stub.acquire({ holder: "w", waitMs: 5000 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    // The release answers before its delete is written; the woken waiter's grant shares that write.
    const a = leases.find((l) => l.holder === "a")!;
    expect(await stub.release({ leaseId: a.id, fence: a.fence })).toEqual({ ok: true, released: true });
    const woken = await waiter;
    expect(woken).toMatchObject({ ok: true, lease: { holder: "w", fence: 4 } });
    stub = await restartCoordinator(name);
    const s = await stub.stats();
    expect(s.held).toBe(3);
    expect(s.leases.map((l) => l.holder).sort()).toEqual(["b", "c", "w"]);
    expect(await stub.acquire({ holder: "x", waitMs: 0 })).toMatchObject({ ok: false });
    if (!woken.ok) throw new Error("unreachable");
    expect(await stub.release({ leaseId: woken.lease.id, fence: woken.lease.fence })).toEqual({ ok: true, released: true });
    expect((await grant(stub, "y")).fence).toBe(5);
  });

  it("writes batches larger than one statement's rows: 130 grants and 130 releases survive a restart", async () => {
    let stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    await stub.setLimit(200);
    // 130 calls made in one task inside the object: one flush of 130 rows, more than one statement's.
    const results = await runInDurableObject(stub, (object) => Promise.all(Array.from({ length: 130 }, (_, i) => object.acquire({ holder: `h${i}` }))));
    const leases = results.map((r) => {
      if (!r.ok) throw new Error(`expected a grant, got ${r.code}`);
      return r.lease;
    });
    stub = await restartCoordinator(name);
    const held = await stub.stats();
    expect(held.held).toBe(130);
    expect(new Set(held.leases.map((l) => l.holder)).size).toBe(130);
    const keep = leases.slice(0, 5);
    const released = await runInDurableObject(stub, (object) => Promise.all(leases.slice(5).map((l) => object.release({ leaseId: l.id, fence: l.fence }))));
    expect(released.every((r) => r.ok)).toBe(true);
    stub = await restartCoordinator(name);
    const after = await stub.stats();
    expect(after.leases.map((l) => l.holder).sort()).toEqual(keep.map((l) => l.holder).sort());
    expect((await grant(stub, "next")).fence).toBe(131);
  });

  it("arms an alarm at the next expiry, and the alarm reaps a dead holder's lease", async () => {
    const stub = freshPool();
    const lease = await grant(stub, "dies");
    const alarmAt = await runInDurableObject(stub, (_, state) => state.storage.getAlarm());
    expect(alarmAt).toBe(lease.expiresAt);
    // Fire the alarm early: nothing is due yet, so the lease stays and the alarm is re-armed.
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    expect((await stub.stats()).held).toBe(1);
    expect(await runInDurableObject(stub, (_, state) => state.storage.getAlarm())).toBe(lease.expiresAt);
    // Travel past the expiry: tests and objects share one isolate, so one clock.
    const realNow = Date.now;
    Date.now = () => realNow() + 31_000;
    try {
      expect(await runDurableObjectAlarm(stub)).toBe(true);
      const s = await stub.stats();
      expect(s).toMatchObject({ held: 0, counters: { expired: 1 } });
    } finally {
      Date.now = realNow;
    }
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence })).toMatchObject({ code: "LEASE_NOT_FOUND" });
  });

  it("returns a slot within the TTL when its holder never releases", async () => {
    const stub = freshPool();
    const lease = await stub.acquire({ holder: "crashes", ttlMs: 200 });
    expect(lease.ok).toBe(true);
    for (let i = 0; i < 2; i++) await grant(stub);
    const started = Date.now();
    const waiter = await stub.acquire({ holder: "next", waitMs: 2000 });
    expect(waiter.ok).toBe(true);
    expect(Date.now() - started).toBeLessThan(1000);
    expect((await stub.stats()).counters.expired).toBe(1);
  });

  it("renews a lease so it outlives its first TTL", async () => {
    const stub = freshPool();
    const r = await stub.acquire({ ttlMs: 150 });
    if (!r.ok) throw new Error(r.code);
    const renewed = await stub.renew({ leaseId: r.lease.id, fence: r.lease.fence }, 5000);
    expect(renewed.ok && renewed.lease.expiresAt).toBeGreaterThan(r.lease.expiresAt);
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect((await stub.stats()).held).toBe(1);
  });

  it("the client maps failures to LeaseErrors and withLease always releases", async () => {
    const stub = freshPool();
    const leases = new Leases(stub, { holder: "client" });
    const value = await leases.withLease(async ({ lease }) => {
      expect((await stub.stats()).held).toBe(1);
      return lease.fence;
    });
    expect(value).toBe(1);
    expect((await stub.stats()).held).toBe(0);
    await expect(leases.withLease(() => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect((await stub.stats()).held).toBe(0);
    for (let i = 0; i < 3; i++) await leases.acquire();
    expect(await codeOf(leases.acquire({ waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    expect(await codeOf(leases.release({ id: "forged", fence: 1, holder: "", grantedAt: 0, expiresAt: 0 }))).toBe("LEASE_NOT_FOUND");
  });

  it("waiters get COORDINATOR_UNAVAILABLE when the object restarts under them, and a retry succeeds", async () => {
    const stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    const leases = new Leases(stub);
    const held = [await leases.acquire(), await leases.acquire(), await leases.acquire()];
    const waiting = codeOf(leases.acquire({ waitMs: 5000 }));
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    const again = await restartCoordinator(name);
    expect(await waiting).toBe("COORDINATOR_UNAVAILABLE");
    // The restarted object still counts the three live leases and has no waiters: the limit holds.
    expect(await again.stats()).toMatchObject({ held: 3, waiting: 0 });
    const retried = new Leases(again);
    const late = retried.acquire({ waitMs: 5000 });
    await retried.release(held[0]!);
    expect((await late).fence).toBe(4);
  });

  it("answers a waiter whose grant could not be written with the failure, never a grant, and never hangs", async () => {
    const stub = freshPool();
    const held = [await grant(stub), await grant(stub), await grant(stub)];
    const waiting = stub.acquire({ holder: "w", waitMs: 5000 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    // The storage refuses the next batch (as a full or failing disk would).
    await runInDurableObject(stub, (object) => {
      const store = (object as unknown as { store: { write: () => void } }).store;
      store.write = () => {
        throw new Error("disk full");
      };
    });
    await stub.release({ leaseId: held[0]!.id, fence: held[0]!.fence });
    expect(await waiting).toMatchObject({ ok: false, code: "INTERNAL" });
  });
});
