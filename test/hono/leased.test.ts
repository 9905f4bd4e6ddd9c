import { desc, sql as dsql } from "drizzle-orm";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { pgTable, text } from "drizzle-orm/pg-core";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import { Hono } from "hono";
import pg from "pg";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { counted } from "../support/counted.ts";
import { pitches } from "../support/pitches-table.ts";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import type { DriverModule } from "../../src/db/driver.ts";
import { driver as pgDriver } from "../../src/drivers/pg.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { leased } from "../../src/hono.ts";
import { forgetPools } from "../local/helpers.ts";

// A real Hono app, real Postgres (the database of `npm test`), the real local coordinator.
const url = process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/leasegate_test";
const APP = `hono-leased-${process.pid}`;
// Each test's connections carry an application_name of their own, so a leak shows in its own test.
let appName = APP;
const admin = postgres(url, { max: 2, onnotice: () => {} });
const base = `hono-${process.pid}-${Date.now()}`;
const coordinators: PostgresCoordinator[] = [];
const clients: postgres.Sql[] = [];
let seq = 0;

afterAll(async () => {
  for (const c of coordinators) await c.close();
  await forgetPools(admin, `${base}-%`);
  for (const s of clients) await s.end();
  await admin.end();
});

/** A fresh pool on the real PostgresCoordinator, and a Leases client over it that counts its calls. */
function pool(config: { limit?: number; maxQueue?: number; waitMs?: number; leaseTtlMs?: number } = {}) {
  const sql = postgres(url, { max: 3, onnotice: () => {} });
  clients.push(sql);
  const coordinator = new PostgresCoordinator({
    sql,
    pool: `${base}-${++seq}`,
    config: { limit: 2, maxQueue: 10, waitMs: 2000, leaseTtlMs: 30_000, ...config },
  });
  coordinators.push(coordinator);
  appName = `${APP}-${seq}`;
  const real = new Leases(coordinator);
  const calls: string[] = [];
  const leases = counted(real, calls);
  return { leases, calls, stats: () => real.stats() };
}

const backends = async () =>
  Number((await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${appName}`)[0]!.n);
/** An app whose onError answers quietly (Hono's default logs every handler error). */
const quiet = () => new Hono().onError((_e, c) => c.text("handler error", 500));
/** The middleware's database options: node-postgres to the test database, named for the current pool. */
const onPg = () => ({ driver: pgDriver, connectionString: () => url, applicationName: appName });

describe("leased() on Node with node-postgres", () => {
  it("acquires on the first call of c.var.client(), hands out the same client after, then closes and releases", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    let during: number | undefined;
    app.get("/x", async (c) => {
      expect(p.calls).toEqual([]);
      const a = await c.var.client();
      const b = await c.var.client();
      during = (await p.stats()).held;
      const { rows } = await a.query("SELECT $1::int + 1 AS n", [41]);
      return c.json({ same: a === b, n: rows[0].n });
    });
    const res = await app.request("/x");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ same: true, n: 42 });
    expect(during).toBe(1);
    expect(p.calls).toEqual(["acquire", "release"]);
    // No executionCtx on Node: the close and the release were awaited before the response.
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("renews the lease of a request that outlives its TTL: held throughout, never reaped", async () => {
    const p = pool({ leaseTtlMs: 300 });
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/long", async (c) => {
      const client = await c.var.client();
      // Three lease lifetimes of work: without renewal the slot would be reaped under it.
      await client.query("SELECT pg_sleep(0.9)");
      const s = await p.stats();
      return c.json({ held: s.held, expired: s.counters.expired });
    });
    const res = await app.request("/long");
    expect(await res.json()).toEqual({ held: 1, expired: 0 });
    expect(p.calls.filter((x) => x === "renew").length).toBeGreaterThanOrEqual(2);
    expect(p.calls.at(-1)).toBe("release");
    expect((await p.stats()).counters).toMatchObject({ released: 1, expired: 0 });
  });

  it("makes no coordinator call and opens no connection for a handler that never asks", async () => {
    const p = pool();
    let built = 0;
    const app = quiet().use(
      leased({
        leases: p.leases,
        ...onPg(),
        connectionString: () => {
          built++;
          return url;
        },
      }),
    );
    app.get("/free", (c) => c.text("no database"));
    expect((await app.request("/free")).status).toBe(200);
    expect(p.calls).toEqual([]);
    expect(built).toBe(0);
  });

  it("releases the lease and closes the connection when the handler throws", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/boom", async (c) => {
      await (await c.var.client()).query("SELECT 1");
      throw new Error("handler failed");
    });
    const res = await app.request("/boom");
    expect(res.status).toBe(500);
    expect(p.calls).toEqual(["acquire", "release"]);
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("releases in finally: also when the error escapes Hono (an onError that rethrows)", async () => {
    const p = pool();
    const app = new Hono()
      .onError((error) => {
        throw error;
      })
      .use(leased({ leases: p.leases, ...onPg() }));
    app.get("/escape", async (c) => {
      await (await c.var.client()).query("SELECT 1");
      throw new Error("escapes");
    });
    await expect(app.request("/escape")).rejects.toThrow("escapes");
    expect(p.calls).toEqual(["acquire", "release"]);
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("closes and releases what a handler started opening but never awaited", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/forgot", (c) => {
      void c.var.client();
      return c.text("answered before the lease came");
    });
    expect((await app.request("/forgot")).status).toBe(200);
    expect(p.calls).toEqual(["acquire", "release"]);
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("a refusal of a lease nobody awaited is no unhandled rejection", async () => {
    const p = pool({ limit: 1, maxQueue: 0 });
    const holder = await p.leases.acquire({ holder: "test" });
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/ignored", async (c) => {
      void c.var.client();
      // The refusal (QUEUE_FULL) arrives while the handler is still busy with something else.
      await new Promise((resolve) => setTimeout(resolve, 100));
      return c.text("did without");
    });
    expect((await app.request("/ignored")).status).toBe(200);
    // The test's own acquire, then the request's (refused): nothing to release.
    expect(p.calls).toEqual(["acquire", "acquire"]);
    await p.leases.release(holder);
  });

  it("answers 503 with Retry-After and the code for QUEUE_FULL and ACQUIRE_TIMEOUT, and gives the slot back", async () => {
    const p = pool({ limit: 1, maxQueue: 0 });
    // Hono's own default onError here: the 503 replaces whatever onError answered.
    const app = new Hono().use(leased({ leases: p.leases, ...onPg(), waitMs: 150 }));
    app.get("/q", async (c) => c.json((await (await c.var.client()).query("SELECT 1 AS one")).rows));
    const holder = await p.leases.acquire({ holder: "test" });
    const full = await app.request("/q");
    expect(full.status).toBe(503);
    expect(Number(full.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const body = (await full.json()) as { error: { code: string; message: string; retryAfterMs: number } };
    expect(body.error.code).toBe("QUEUE_FULL");
    expect(body.error.message).toEqual(expect.any(String));
    expect(body.error.retryAfterMs).toBeGreaterThan(0);

    const waiting = pool({ limit: 1, maxQueue: 5 });
    const slow = quiet().use(leased({ leases: waiting.leases, ...onPg(), waitMs: 150 }));
    slow.get("/q", async (c) => c.json((await (await c.var.client()).query("SELECT 1 AS one")).rows));
    const other = await waiting.leases.acquire({ holder: "test" });
    const timedOut = await slow.request("/q");
    expect(timedOut.status).toBe(503);
    expect(timedOut.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(((await timedOut.json()) as { error: { code: string } }).error.code).toBe("ACQUIRE_TIMEOUT");

    await p.leases.release(holder);
    await waiting.leases.release(other);
    expect((await app.request("/q")).status).toBe(200);
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("answers 503 DATABASE_UNAVAILABLE when the database refuses, and releases the lease it took", async () => {
    const p = pool();
    const app = quiet().use(
      leased({
        leases: p.leases,
        ...onPg(),
        connectionString: () => "postgres://postgres@127.0.0.1:1/postgres",
      }),
    );
    app.get("/down", async (c) => c.json((await (await c.var.client()).query("SELECT 1")).rows));
    const res = await app.request("/down");
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("DATABASE_UNAVAILABLE");
    expect(p.calls).toEqual(["acquire", "release"]);
    expect((await p.stats()).held).toBe(0);
  });

  it("a backend terminated mid-query (57P01 from pg) answers 503, and the slot comes back", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/sleep", async (c) => c.json((await (await c.var.client()).query("SELECT pg_sleep(10)")).rows));
    const answer = app.request("/sleep");
    await expect
      .poll(async () =>
        Number(
          (
            await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${appName} AND query LIKE '%pg_sleep%'`
          )[0]!.n,
        ),
      )
      .toBe(1);
    await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${appName} AND query LIKE '%pg_sleep%'`;
    const res = await answer;
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("DATABASE_UNAVAILABLE");
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("runs a Drizzle select, and rolls a Drizzle transaction back when it throws", async () => {
    const p = pool();
    await admin`CREATE TABLE IF NOT EXISTS hono_leased_notes (note text NOT NULL)`;
    await admin`DELETE FROM hono_leased_notes`;
    const notes = pgTable("hono_leased_notes", { note: text("note").notNull() });
    const app = quiet().use("/api/*", leased({ leases: p.leases, ...onPg() }));
    app.get("/api/trending", async (c) => {
      const db = drizzlePg(await c.var.client());
      return c.json(
        await db
          .select({ id: pitches.id, title: pitches.title })
          .from(pitches)
          .orderBy(desc(pitches.viewCount))
          .limit(3),
      );
    });
    app.post("/api/notes", async (c) => {
      const db = drizzlePg(await c.var.client());
      await db.transaction(async (tx) => {
        await tx.insert(notes).values({ note: "kept" });
      });
      await db.transaction(async (tx) => {
        await tx.insert(notes).values({ note: "rolled back" });
        throw new Error("after the insert");
      });
      return c.text("unreachable");
    });
    const trending = await app.request("/api/trending");
    expect(trending.status).toBe(200);
    const rows = (await trending.json()) as Array<{ id: number; title: string }>;
    expect(rows).toHaveLength(3);
    expect(rows[0]).toEqual({ id: expect.any(Number), title: expect.any(String) });

    expect((await app.request("/api/notes", { method: "POST" })).status).toBe(500);
    expect((await admin`SELECT note FROM hono_leased_notes`).map((r) => r.note)).toEqual(["kept"]);
    expect((await p.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
    await admin`DROP TABLE hono_leased_notes`;
  });

  it("serves a postgres.js client too (Drizzle over postgres-js), with postgres.js options passed through", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, ...onPg(), driver: postgresDriver({ prepare: false }) }));
    app.get("/count", async (c) => {
      const db = drizzlePostgresJs(await c.var.client());
      const [row] = await db.select({ n: dsql<number>`count(*)::int` }).from(pitches);
      return c.json(row);
    });
    const res = await app.request("/count");
    expect(res.status).toBe(200);
    expect(((await res.json()) as { n: number }).n).toBeGreaterThan(0);
    expect(p.calls).toEqual(["acquire", "release"]);
    expect(await backends()).toBe(0);
  });

  it("takes any driver: a trial one's close runs before the slot is given back", async () => {
    const p = pool();
    // A driver of the app's own, by the interface alone: node-postgres underneath, its close noted.
    const trial: DriverModule<pg.Client> = {
      name: "trial",
      packageName: "pg",
      async connect(target) {
        const conn = await pgDriver.connect(target);
        return {
          ...conn,
          close: async () => {
            p.calls.push("close");
            await conn.close();
          },
        };
      },
    };
    const app = quiet().use(leased({ leases: p.leases, ...onPg(), driver: trial }));
    app.get("/x", async (c) => c.json((await (await c.var.client()).query("SELECT 1 AS one")).rows));
    expect((await app.request("/x")).status).toBe(200);
    expect(p.calls).toEqual(["acquire", "close", "release"]);
    expect(await backends()).toBe(0);
  });

  it("names its connections by the app's APPLICATION_NAME binding when given no applicationName, as the pool's are", async () => {
    const p = pool();
    const app = quiet().use(leased({ leases: p.leases, driver: pgDriver, connectionString: () => url }));
    app.get("/name", async (c) =>
      c.json((await (await c.var.client()).query("SELECT current_setting('application_name') AS name")).rows[0]),
    );
    const named = await app.request("/name", {}, { APPLICATION_NAME: appName });
    expect(await named.json()).toEqual({ name: appName });
    const unnamed = await app.request("/name");
    expect(await unnamed.json()).toEqual({ name: "leasegate" });
    expect(await backends()).toBe(0);
  });

  it("rejects c.var.client() once its request has ended", async () => {
    const p = pool();
    let late: (() => Promise<unknown>) | undefined;
    const app = quiet().use(leased({ leases: p.leases, ...onPg() }));
    app.get("/late", (c) => {
      late = c.var.client;
      return c.text("ok");
    });
    expect((await app.request("/late")).status).toBe(200);
    await expect(late!()).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(p.calls).toEqual([]);
  });

  it("rejects bad options at once with INVALID_ARGUMENT naming the option", () => {
    const p = pool();
    const fails = (options: unknown) => {
      try {
        leased(options as never);
      } catch (error) {
        return isLeaseError(error) ? `${error.code}: ${error.message}` : String(error);
      }
      return "accepted";
    };
    expect(fails(undefined)).toMatch(/^INVALID_ARGUMENT: .*leased\(options\)/);
    expect(fails({ ...onPg() })).toMatch(/^INVALID_ARGUMENT: .*`leases`/);
    expect(fails({ leases: p.leases, connectionString: () => url })).toMatch(/^INVALID_ARGUMENT: .*`driver`/);
    // A client where the driver belongs (the `connect` of old built one): named, not sniffed.
    expect(fails({ leases: p.leases, driver: new pg.Client(), connectionString: () => url })).toMatch(
      /^INVALID_ARGUMENT: .*`driver`/,
    );
    expect(fails({ leases: p.leases, driver: pgDriver })).toMatch(/^INVALID_ARGUMENT: .*`connectionString`/);
    expect(fails({ leases: p.leases, ...onPg(), waitMs: -1 })).toMatch(/^INVALID_ARGUMENT: .*`waitMs`.*-1/);
    expect(fails({ leases: p.leases, ...onPg(), ttlMs: "5s" })).toMatch(/^INVALID_ARGUMENT: .*`ttlMs`/);
    expect(fails({ leases: p.leases, ...onPg(), applicationName: "x".repeat(64) })).toMatch(
      /^INVALID_ARGUMENT: .*`applicationName`/,
    );
    expect(fails({ leases: p.leases, ...onPg(), connectTimeoutMs: 5 })).toMatch(
      /^INVALID_ARGUMENT: .*`connectTimeoutMs`/,
    );
    expect(fails({ leases: () => p.leases, ...onPg(), waitMs: 0 })).toBe("accepted");
  });
});
