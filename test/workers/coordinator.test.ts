import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { codeOf } from "../support/codes.ts";
import { createPool, leaseRef, snapshot } from "../../src/core/index.ts";
import { type CoordinatorStub, restartCoordinator } from "../support/coordinator.ts";

/** A lease that must be granted at once (`ttlMs`: its lifetime, default the pool's). */
async function grant(stub: CoordinatorStub, holder = "t", ttlMs?: number) {
  const r = await stub.acquire({ holder, ttlMs });
  if (!r.ok) throw new Error(`expected a grant, got ${r.code}`);
  return r.lease;
}

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
    expect(await stub.release({ leaseId: crypto.randomUUID(), fence: lease.fence })).toMatchObject({
      code: "LEASE_NOT_FOUND",
    });
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence + 1 })).toMatchObject({ code: "STALE_FENCE" });
    expect((await stub.stats()).held).toBe(1);
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence })).toEqual({ ok: true, released: true });
    expect(await stub.release({ leaseId: lease.id, fence: lease.fence })).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect((await stub.stats()).counters.released).toBe(1);
  });

  it("after a restart grants nothing until earlier leases are recovered or expired; verified renewals re-register them; fences keep growing", async () => {
    let stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    const a = await grant(stub, "a", 1000);
    const b = await grant(stub, "b", 1000);
    await grant(stub, "c", 1000);
    stub = await restartCoordinator(name);
    const s = await stub.stats();
    // It forgot its leases: none is counted, and none is granted while one could be alive.
    expect(s).toMatchObject({ held: 0, waiting: 0, recovery: { recovered: 0 } });
    expect(s.recovery!.endsInMs).toBeGreaterThan(0);
    expect(await stub.acquire({ holder: "x", waitMs: 0 })).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
    expect(await stub.acquireMany([{ holder: "y" }])).toEqual({ ok: true, results: [null] });
    // a's holder renews with its token: a keeps its slot, until the expiry it was told; b's holder
    // is done; c's holder died.
    const renewed = await stub.renew(leaseRef(a), 3000);
    expect(renewed).toMatchObject({
      ok: true,
      lease: { id: a.id, fence: a.fence, holder: "recovered", expiresAt: a.expiresAt, token: a.token },
    });
    expect(await stub.release(leaseRef(b))).toEqual({ ok: true, released: true });
    // A renewal cannot invent a lease: a fence the object never handed out is not recovered.
    expect(await stub.renew({ leaseId: crypto.randomUUID(), fence: 10_000_000 })).toMatchObject({
      ok: false,
      code: "LEASE_NOT_FOUND",
    });
    expect(await stub.stats()).toMatchObject({ held: 1, recovery: { recovered: 1 } });
    // A caller that waits is granted when the window closes, after every earlier lease's expiry.
    const waited = await stub.acquire({ holder: "d", waitMs: 10_000, ttlMs: 400 });
    if (!waited.ok) throw new Error(waited.code);
    expect(Date.now()).toBeGreaterThanOrEqual(a.expiresAt);
    expect(waited.lease.fence).toBeGreaterThan(a.fence);
    // a was recovered until the expiry its holder was told, and not renewed since: it is gone.
    expect(await stub.stats()).toMatchObject({ held: 1, recovery: null, leases: [{ holder: "d" }] });
    // After the window an unknown lease is gone.
    expect(await stub.renew({ leaseId: b.id, fence: b.fence })).toMatchObject({ ok: false, code: "LEASE_NOT_FOUND" });
    const before = waited.lease.fence;
    stub = await restartCoordinator(name);
    await stub.release({ leaseId: waited.lease.id, fence: waited.lease.fence });
    const after = await stub.acquire({ holder: "e", waitMs: 10_000, ttlMs: 400 });
    expect(after.ok && after.lease.fence).toBeGreaterThan(before);
  });

  it("writes nothing per call: no lease rows, no alarm; bounds ahead of need and the counters within a second", async () => {
    const stub = freshPool();
    const lease = await grant(stub, "a");
    await stub.renew(leaseRef(lease));
    await stub.release(leaseRef(lease));
    const stored = await runInDurableObject(stub, (_, state) => ({
      alarm: state.storage.getAlarm(),
      tables: state.storage.sql
        .exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'leases'")
        .toArray(),
      bounds: state.storage.kv.get<{ fenceCeiling: number; horizon: number }>("bounds"),
    }));
    expect(await stored.alarm).toBeNull();
    expect(stored.tables).toEqual([]);
    expect(stored.bounds!.fenceCeiling).toBeGreaterThan(lease.fence);
    expect(stored.bounds!.horizon).toBeGreaterThanOrEqual(lease.expiresAt);
    await expect
      .poll(
        () =>
          runInDurableObject(
            stub,
            (_, state) => state.storage.kv.get<{ counters: { released: number } }>("snapshot")?.counters.released,
          ),
        {
          timeout: 3000,
        },
      )
      .toBe(1);
  });

  it("an object stored by the previous version: its lease rows are waited out (no token: not recovered), its counters kept, its rows dropped", async () => {
    const stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    const now = Date.now();
    // What the previous version wrote: lease rows and the snapshot in meta.
    await runInDurableObject(stub, (_, state) => {
      const sql = state.storage.sql;
      sql.exec(
        "CREATE TABLE leases (id TEXT PRIMARY KEY, fence INTEGER NOT NULL, holder TEXT NOT NULL, granted_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, priority TEXT)",
      );
      sql.exec(
        "INSERT INTO leases VALUES ('old-a', 7, 'a', ?, ?, NULL), ('old-b', 8, 'b', ?, ?, NULL)",
        now,
        now + 600,
        now,
        now + 900,
      );
      const snap = {
        ...snapshot(createPool({ limit: 3, maxQueue: 5, waitMs: 400, leaseTtlMs: 30_000 })),
        nextFence: 9,
      };
      snap.counters.granted = 8;
      sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot', ?)", JSON.stringify(snap));
      state.storage.kv.delete("snapshot");
      state.storage.kv.delete("bounds");
    });
    const restarted = await restartCoordinator(name);
    const s = await restarted.stats();
    expect(s).toMatchObject({ held: 0, counters: { granted: 8 } });
    expect(s.recovery!.endsInMs).toBeGreaterThanOrEqual(900 - (Date.now() - now));
    // Leases of the previous version carry no token: their holders are told, and stop.
    expect(await restarted.renew({ leaseId: "old-a", fence: 7, expiresAt: now + 600 }, 400)).toMatchObject({
      ok: false,
      code: "LEASE_NOT_FOUND",
    });
    expect(await restarted.release({ leaseId: "old-b", fence: 8 })).toEqual({ ok: true, released: true });
    const tables = await runInDurableObject(restarted, (_, state) =>
      state.storage.sql.exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'leases'").toArray(),
    );
    expect(tables).toEqual([]);
    const next = await restarted.acquire({ holder: "c", waitMs: 5000 });
    expect(next.ok && next.lease.fence).toBeGreaterThan(8);
    expect(Date.now()).toBeGreaterThanOrEqual(now + 900);
  });

  it("a lease longer than the durable horizon is answered once bounds covering it are durable", async () => {
    const stub = freshPool();
    await grant(stub, "a", 400);
    const long = await stub.acquire({ holder: "long", ttlMs: 600_000 });
    if (!long.ok) throw new Error(long.code);
    const bounds = await runInDurableObject(stub, (_, state) => state.storage.kv.get<{ horizon: number }>("bounds"));
    expect(bounds!.horizon).toBeGreaterThanOrEqual(long.lease.expiresAt);
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
    expect(await codeOf(leases.release({ id: "forged", fence: 1, holder: "", grantedAt: 0, expiresAt: 0 }))).toBe(
      "LEASE_NOT_FOUND",
    );
  });

  it("waiters get COORDINATOR_UNAVAILABLE when the object restarts under them, and a retry succeeds", async () => {
    const stub = freshPool();
    const name = `coordinator-test-${poolSeq}`;
    const leases = new Leases(stub);
    const held = [
      await leases.acquire({ ttlMs: 400 }),
      await leases.acquire({ ttlMs: 400 }),
      await leases.acquire({ ttlMs: 400 }),
    ];
    const waiting = codeOf(leases.acquire({ waitMs: 5000 }));
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    const again = await restartCoordinator(name);
    expect(await waiting).toBe("COORDINATOR_UNAVAILABLE");
    // The restarted object recovers: no waiters, and nothing granted while the three may be alive.
    expect(await again.stats()).toMatchObject({ held: 0, waiting: 0, recovery: { recovered: 0 } });
    const retried = new Leases(again);
    const late = retried.acquire({ waitMs: 5000 });
    await retried.release(held[0]!);
    expect((await late).fence).toBeGreaterThan(held[2]!.fence);
    expect(Date.now()).toBeGreaterThanOrEqual(held[2]!.expiresAt);
  });

  it("answers a waiter whose grant could not be made durable with the failure, never a grant, and never hangs", async () => {
    const stub = freshPool();
    const held = [await grant(stub), await grant(stub), await grant(stub)];
    // Its lease reaches past the durable horizon, so its grant waits for a bounds write.
    const waiting = stub.acquire({ holder: "w", waitMs: 5000, ttlMs: 600_000 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    // The storage refuses to confirm (as a full or failing disk would).
    await runInDurableObject(stub, (object) => {
      const store = (object as unknown as { store: { sync: () => Promise<void> } }).store;
      store.sync = () => Promise.reject(new Error("disk full"));
    });
    await stub.release({ leaseId: held[0]!.id, fence: held[0]!.fence });
    expect(await waiting).toMatchObject({ ok: false, code: "INTERNAL" });
  });
});
