import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { codeOf } from "../support/codes.ts";
import { localPools, url } from "./helpers.ts";

// The real Postgres of `npm test`; every test takes a pool name of its own.
const pools = localPools("unit", { limit: 2, maxQueue: 10, waitMs: 1000, leaseTtlMs: 5000 });
const { base, clients } = pools;
const coordinator = pools.coordinator;

afterAll(() => pools.cleanup());

describe("PostgresCoordinator", () => {
  it("grants up to the limit with strictly increasing fences, then queues FIFO until a release", async () => {
    const leases = new Leases(coordinator());
    const a = await leases.acquire({ holder: "a" });
    const b = await leases.acquire({ holder: "b" });
    expect(b.fence).toBeGreaterThan(a.fence);
    const order: string[] = [];
    const c = leases.acquire({ holder: "c" }).then((l) => {
      order.push("c");
      return l;
    });
    const d = leases.acquire({ holder: "d" }).then((l) => {
      order.push("d");
      return l;
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual([]);
    await leases.release(a);
    const lc = await c;
    expect(lc.holder).toBe("c");
    expect(lc.fence).toBeGreaterThan(b.fence);
    await leases.release(b);
    expect((await d).fence).toBeGreaterThan(lc.fence);
    expect(order).toEqual(["c", "d"]);
    const s = await leases.stats();
    expect(s.held).toBe(2);
    expect(s.counters.granted).toBe(4);
    expect(s.counters.released).toBe(2);
  });

  it("refuses a second release, a stale fence, and sheds with QUEUE_FULL and ACQUIRE_TIMEOUT", async () => {
    const leases = new Leases(coordinator({ limit: 1, maxQueue: 1, waitMs: 200 }));
    const a = await leases.acquire();
    expect(await codeOf(leases.release({ ...a, fence: a.fence + 1 }))).toBe("STALE_FENCE");
    expect(await codeOf(leases.acquire({ waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    const queued = codeOf(leases.acquire());
    await new Promise((r) => setTimeout(r, 30));
    expect(await codeOf(leases.acquire())).toBe("QUEUE_FULL");
    const started = Date.now();
    expect(await queued).toBe("ACQUIRE_TIMEOUT");
    expect(Date.now() - started).toBeLessThan(500);
    await leases.release(a);
    expect(await codeOf(leases.release(a))).toBe("LEASE_NOT_FOUND");
    expect(await codeOf(leases.acquire({ ttlMs: -1 }))).toBe("INVALID_ARGUMENT");
  });

  it("reaps an expired lease for a waiter at the expiry, and renew keeps a lease alive", async () => {
    const leases = new Leases(coordinator({ limit: 1, leaseTtlMs: 150, waitMs: 2000 }));
    const dead = await leases.acquire();
    const started = Date.now();
    const next = await leases.acquire();
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(100);
    expect(waited).toBeLessThan(500);
    expect(await codeOf(leases.release(dead))).toBe("LEASE_NOT_FOUND");
    // At most 20 × the pool's TTL (150 ms): 3 s.
    const renewed = await leases.renew(next, 3_000);
    expect(renewed.expiresAt).toBeGreaterThan(next.expiresAt);
    expect((await leases.stats()).counters.expired).toBe(1);
  });

  it("shares one limit between two coordinators of the same pool, each with its own connections", async () => {
    const name = `${base}-shared`;
    const one = new Leases(coordinator({ limit: 1 }, name));
    const two = new Leases(coordinator({ limit: 1 }, name));
    const held = await one.acquire();
    const waiting = two.acquire({ waitMs: 2000 });
    await new Promise((r) => setTimeout(r, 50));
    expect((await two.stats()).waiting).toBe(1);
    await one.release(held);
    const got = await waiting;
    expect(got.fence).toBeGreaterThan(held.fence);
    expect(await codeOf(one.acquire({ waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    await two.release(got);
  });

  it("runs withLease unchanged and gives the slot back when the work throws", async () => {
    const leases = new Leases(coordinator({ limit: 1 }));
    expect(await leases.withLease(async ({ lease }) => lease.fence)).toBeGreaterThan(0);
    await expect(leases.withLease(() => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect((await leases.stats()).held).toBe(0);
  });

  it("rejects a bad pool name and a bad config with codes", () => {
    coordinator();
    const sql = clients[0]!;
    expect(
      () =>
        new PostgresCoordinator({
          sql,
          pool: "no spaces",
          config: { limit: 1, maxQueue: 1, waitMs: 1, leaseTtlMs: 1 },
        }),
    ).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(
      () => new PostgresCoordinator({ sql, pool: "ok", config: { limit: 0, maxQueue: 1, waitMs: 1, leaseTtlMs: 1 } }),
    ).toThrow(expect.objectContaining({ code: "INVALID_CONFIG" }));
    const single = postgres(url, { max: 1 });
    clients.push(single);
    expect(
      () =>
        new PostgresCoordinator({
          sql: single,
          pool: "ok",
          config: { limit: 1, maxQueue: 1, waitMs: 1, leaseTtlMs: 1 },
        }),
    ).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
  });

  it("withdraws its waiters on close", async () => {
    const c = coordinator({ limit: 1 });
    const a = await c.acquire();
    const waiting = c.acquire({ waitMs: 5000 });
    await new Promise((r) => setTimeout(r, 30));
    await c.close();
    const r = await waiting;
    expect(r.ok ? "granted" : r.code).toBe("COORDINATOR_UNAVAILABLE");
    expect(a.ok).toBe(true);
    const after = await c.acquire();
    expect(after.ok ? "granted" : after.code).toBe("COORDINATOR_UNAVAILABLE");
  });
});

describe("PostgresCoordinator after its LISTEN connection is cut", () => {
  it("listens again, and its new waiters are neither withdrawn as dead nor left without their grant", async () => {
    const name = `${base}-relisten`;
    const waiting = coordinator({ limit: 1, waitMs: 3000 }, name);
    const other = coordinator({ limit: 1, waitMs: 3000 }, name);
    const held = await other.acquire();
    if (!held.ok) throw new Error("expected a grant");
    await waiting.ready();
    const admin = clients[0]!;
    const killed = await admin`
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = ${`listen "leasegate.${name}"`} AND pid <> pg_backend_pid()`;
    expect(killed.length).toBe(2);
    // postgres.js re-listens on a new connection; give it a moment (test-side wait).
    const until = Date.now() + 3000;
    while (
      (await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = ${`listen "leasegate.${name}"`}`)[0]!
        .n < 2
    ) {
      if (Date.now() > until) throw new Error("never listened again");
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    const pending = waiting.acquire();
    await new Promise((r) => setTimeout(r, 100));
    // A transition by the other process: it must not withdraw the live waiter.
    expect((await other.acquire({ waitMs: 0 })).ok).toBe(false);
    const released = await other.release({ leaseId: held.lease.id, fence: held.lease.fence });
    expect(released.ok).toBe(true);
    const got = await pending;
    expect(got.ok ? "granted" : got.code).toBe("granted");
    expect(Date.now() - started).toBeLessThan(1000);
  });
});
