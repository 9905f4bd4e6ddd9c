import { Hono } from "hono";
import postgres, { type Sql } from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { leased } from "../../src/hono.ts";
import { TEST_URL } from "./helpers.ts";
import { forgetPools } from "../local/helpers.ts";

// A request that holds the pool's only slot and asks for another would wait on itself until its
// deadline (and under saturation, every request would): it fails at once with NESTED_LEASE.
// Real Postgres, the real local coordinator (localPool), LEASE_LIMIT=1, a 5 s queue deadline.
const base = `nested-${process.pid}-${Date.now()}`;
const pools: LocalPool<Sql>[] = [];
let seq = 0;

async function onePool(name = `${base}-${++seq}`): Promise<LocalPool<Sql>> {
  const pool = await localPool(
    {
      DATABASE_URL: TEST_URL,
      LEASE_POOL: name,
      LEASE_LIMIT: "1",
      LEASE_WAIT_MS: "5000",
      APPLICATION_NAME: "leasegate-nested",
    },
    { driver },
  );
  pools.push(pool);
  return pool;
}

afterAll(async () => {
  for (const pool of pools) await pool.close();
  const admin = postgres(TEST_URL, { max: 1, onnotice: () => {} });
  await forgetPools(admin, `${base}-%`);
  await admin.end();
});

async function failsFast(run: () => Promise<unknown>): Promise<{ code: string; message: string; ms: number }> {
  const started = Date.now();
  const error = await run().then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isLeaseError(error)) throw new Error(`expected a LeaseError, got ${String(error)}`);
  return { code: error.code, message: error.message, ms: Date.now() - started };
}

describe("nested leases on Node (the local coordinator, LEASE_LIMIT=1)", () => {
  it("a query inside a transaction of the same pool fails fast with NESTED_LEASE instead of waiting on itself", async () => {
    const pool = await onePool();
    const nested = await failsFast(() => pool.db.transaction(async () => pool.db.query("SELECT 1")));
    expect(nested.code).toBe("NESTED_LEASE");
    expect(nested.message).toContain(pool.name);
    expect(nested.message).toMatch(/pass it, or the transaction, down/);
    // Far below the 5 s queue deadline it would otherwise have waited out.
    expect(nested.ms).toBeLessThan(1000);
    // Nothing leaks: the outer lease is back, and the pool serves the next request.
    expect((await pool.leases!.stats()).held).toBe(0);
    expect(await pool.db.query("SELECT 1 AS one")).toEqual([{ one: 1 }]);
  });

  it("withLease inside withLease, and pool.sql inside withLease, fail fast the same way; the slot comes back", async () => {
    const pool = await onePool();
    // localPool's leases are a `Leases` (one coordinator).
    const leases = pool.leases as Leases;
    expect((await failsFast(() => leases.withLease(() => leases.withLease(() => "inner")))).code).toBe("NESTED_LEASE");
    expect((await failsFast(() => leases.withLease(() => pool.sql((sql) => sql`SELECT 1`)))).code).toBe("NESTED_LEASE");
    // An unnamed client over the same coordinator cannot say it is another pool: it counts as this one.
    const unnamed = new Leases(await poolCoordinatorOf(pool));
    expect((await failsFast(() => leases.withLease(() => unnamed.withLease(() => "inner")))).code).toBe("NESTED_LEASE");
    expect((await leases.stats()).held).toBe(0);
  });

  it("sequential and concurrent leases are not nested: a second request queues behind the first and is served", async () => {
    const pool = await onePool();
    await pool.db.query("SELECT 1");
    await pool.db.query("SELECT 1");
    const order: string[] = [];
    const leases = pool.leases as Leases;
    await Promise.all([
      leases.withLease(async () => {
        order.push("a");
        await new Promise((r) => setTimeout(r, 100));
      }),
      leases.withLease(() => void order.push("b")),
    ]);
    expect(order).toEqual(["a", "b"]);
  });

  it("two pools given their own names nest freely: a lease of one does not wait on the other", async () => {
    const a = await onePool();
    const b = await onePool();
    const rows = await a.db.transaction(async (tx) => {
      const [inner] = await b.db.query("SELECT 2 AS two");
      const [outer] = await tx.query("SELECT 1 AS one");
      return [outer, inner];
    });
    expect(rows).toEqual([{ one: 1 }, { two: 2 }]);
  });

  it("a Hono handler holding its request's lease that queries the same pool again answers NESTED_LEASE at once", async () => {
    const pool = await onePool();
    const app = new Hono().use(leased({ leases: pool.leases!, driver, connectionString: () => TEST_URL }));
    app.onError((error, c) => c.json({ code: isLeaseError(error) ? error.code : "other" }, 500));
    app.get("/x", async (c) => {
      const sql = await c.var.client();
      await sql`SELECT 1`;
      return c.json(await pool.db.query("SELECT 1 AS one"));
    });
    const started = Date.now();
    const res = await app.request("/x");
    expect(await res.json()).toEqual({ code: "NESTED_LEASE" });
    expect(Date.now() - started).toBeLessThan(1000);
    expect((await pool.leases!.stats()).held).toBe(0);
  });
});

/** The coordinator under a local pool's leases (for an unnamed client over the same pool). */
async function poolCoordinatorOf(pool: LocalPool) {
  const { PostgresCoordinator } = await import("../../local/postgres-coordinator.ts");
  const sql = postgres(TEST_URL, { max: 2, onnotice: () => {} });
  const coordinator = new PostgresCoordinator({
    sql,
    pool: pool.name,
    config: { limit: 1, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 1500 },
  });
  await coordinator.ready();
  pools.push({
    close: async () => {
      await coordinator.close();
      await sql.end();
    },
  } as LocalPool<Sql>);
  return coordinator;
}
