import postgres, { type Sql } from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { migrate, seed } from "../../examples/pitches/src/schema.ts";
import { type AppDeps, handle } from "../../examples/pitches/src/app.ts";
import type { LeasedPool } from "../../src/db/pool.ts";
import { captureLog, memoryCoordinator, privateCluster } from "./helpers.ts";

// A private cluster on its own port: these tests stop and restart it. The shared one on 5432 is never touched.
const PORT = 5480;
const PASSWORD = "TopSecret-5480";
const cluster = privateCluster(PORT);
// Trust auth ignores the password; it is in the URL so the tests can prove it never leaks.
const url = `postgres://postgres:${PASSWORD}@127.0.0.1:${PORT}/postgres`;

beforeAll(async () => {
  cluster.start();
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  await migrate(sql);
  await seed(sql, 20);
  await sql.end();
}, 60_000);
afterAll(() => cluster.destroy());

function setup(options: { failureThreshold?: number; openMs?: number } = {}) {
  const config = {
    ...databaseConfig({
      DATABASE_URL: url,
      DB_CONNECT_TIMEOUT_MS: "1000",
      DB_DEADLINE_MS: "3000",
      APPLICATION_NAME: "outage-test",
    }),
    breaker: { failureThreshold: options.failureThreshold ?? 3, openMs: options.openMs ?? 400 },
    retry: { maxAttempts: 2, baseDelayMs: 20, maxDelayMs: 100 },
  };
  const log = captureLog();
  const coordinator = memoryCoordinator({ limit: 3, maxQueue: 50, waitMs: 2000, leaseTtlMs: 30_000 });
  const leases = new Leases(coordinator);
  const db = new Database({ name: "outage", driver: openDriver(config), leases, config, log: log.write });
  // The example app's contract on Node: the same handler the Worker runs, over postgres.js on TCP.
  const pool: LeasedPool<Sql> = {
    name: "outage",
    leases,
    db,
    operator: undefined,
    sql: (fn, options) =>
      db.run(async ({ beforeRelease }) => {
        const sql: Sql = postgres(url, {
          max: 1,
          connect_timeout: 1,
          onnotice: () => {},
          fetch_types: false,
          connection: { application_name: "outage-test" },
        });
        beforeRelease(() => sql.end({ timeout: 0 }).catch(() => {}));
        return fn(sql);
      }, options),
  };
  const deps: AppDeps = { pool, debugToken: "t" };
  const get = (path: string) =>
    handle(new Request(`http://node.test${path}`, { headers: { authorization: "Bearer t" } }), deps);
  return { db, log, coordinator, get };
}

const body = async (r: Response) =>
  (await r.json()) as { error?: { code: string }; breaker?: { state: string }; [k: string]: unknown };

describe("the database stops mid-run and comes back", () => {
  it("answers clear 503 DATABASE_UNAVAILABLE while it is down, fails fast with the circuit open, and recovers", async () => {
    const { get, log, db } = setup();
    expect((await get("/api/pitches/trending?limit=2")).status).toBe(200);

    // Traffic keeps flowing while the server stops under it.
    const results: Array<{ status: number; code?: string | undefined }> = [];
    let running = true;
    const traffic = (async () => {
      while (running) {
        const r = await get("/api/pitches/trending?limit=2");
        results.push({ status: r.status, code: (await body(r)).error?.code });
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 150));
    cluster.stop();
    await expect.poll(() => db.breaker.state.state, { timeout: 10_000 }).toBe("open");
    running = false;
    await traffic;

    // Every answer was a success or a clean 503 with the code: no 500, no hang, no crash.
    expect(results.some((r) => r.status === 200)).toBe(true);
    const failures = results.filter((r) => r.status !== 200);
    expect(failures.length).toBeGreaterThan(0);
    expect(new Set(failures.map((r) => `${r.status} ${r.code}`))).toEqual(new Set(["503 DATABASE_UNAVAILABLE"]));

    // Open: fails fast without touching the network, with Retry-After.
    const started = Date.now();
    const fast = await get("/api/pitches/trending");
    expect(Date.now() - started).toBeLessThan(100);
    expect(fast.status).toBe(503);
    expect(fast.headers.get("retry-after")).toMatch(/^\d+$/);
    expect((await body(fast)).error?.code).toBe("DATABASE_UNAVAILABLE");

    const health = await get("/health");
    expect(health.status).toBe(503);
    expect(await body(health)).toMatchObject({ status: "unavailable", database: "down", breaker: { state: "open" } });
    const stats = await body(await get("/__coordinator/stats"));
    expect(stats).toMatchObject({ held: 0, breaker: { name: "outage", state: "open" } });

    cluster.start();
    // After openMs one probe goes through, succeeds, and the circuit closes.
    await expect
      .poll(async () => (await get("/api/pitches/trending?limit=2")).status, { timeout: 10_000, interval: 100 })
      .toBe(200);
    expect(db.breaker.state.state).toBe("closed");
    expect((await get("/health")).status).toBe(200);

    // Failures were logged as bounded JSON, and the password never appears in logs or responses.
    const errors = log.lines.filter((l) => l.event === "database_error");
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toMatchObject({ code: "DATABASE_UNAVAILABLE", database: "outage" });
    expect(log.raw.join("\n")).not.toContain(PASSWORD);
    expect(JSON.stringify(stats)).not.toContain(PASSWORD);
  }, 40_000);
});

describe("backends killed with pg_terminate_backend", () => {
  it("never reruns a statement whose backend was terminated mid-run (57P01): executed maybe, one attempt", async () => {
    const { db, coordinator } = setup();
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    try {
      let attempts = 0;
      const result = db.run(async ({ beforeRelease }) => {
        attempts++;
        // No type fetch first: the only statement on this connection is the one terminated below.
        const sql = postgres(url, {
          max: 1,
          onnotice: () => {},
          fetch_types: false,
          connection: { application_name: "victim" },
        });
        beforeRelease(() => sql.end({ timeout: 0 }).catch(() => {}));
        return sql`SELECT pg_sleep(${attempts === 1 ? 5 : 0}), ${attempts}::int AS attempt`;
      });
      result.catch(() => {}); // asserted below; it may reject before the terminate call answers
      await expect
        .poll(
          async () =>
            (
              await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'victim' AND state = 'active' AND query LIKE '%pg_sleep%'`
            )[0]!.n,
        )
        .toBe(1);
      await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'`;
      // The statement may have run: only the caller knows whether running it twice is safe.
      await expect(result).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE", executed: "maybe" });
      expect(attempts).toBe(1);
      expect(db.breaker.state).toEqual({ state: "closed", failures: 1 });
      await expect.poll(async () => (await coordinator.stats()).held).toBe(0);
    } finally {
      await admin.end();
    }
  });

  it("never retries a syntax or constraint error: one attempt, DATABASE_ERROR, the circuit stays closed", async () => {
    const { db } = setup({ failureThreshold: 1 });
    let attempts = 0;
    const syntax = db.run(async ({ beforeRelease }) => {
      attempts++;
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      beforeRelease(() => sql.end({ timeout: 0 }));
      return sql`SELEC 1`;
    });
    await expect(syntax).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    expect(attempts).toBe(1);
    await expect(
      db.query("INSERT INTO pitches (title, logline, genre, author) VALUES ('', 'x', 'drama', 'a')"),
    ).rejects.toMatchObject({
      code: "DATABASE_ERROR",
    });
    expect(db.breaker.state.state).toBe("closed");
  });
});

describe("too many connections", () => {
  it("retries 53300 within the deadline, answers 503 DATABASE_UNAVAILABLE, and succeeds once a connection frees", async () => {
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    await admin.unsafe("DROP ROLE IF EXISTS limited");
    await admin.unsafe("CREATE ROLE limited LOGIN CONNECTION LIMIT 1");
    const limitedUrl = `postgres://limited:${PASSWORD}@127.0.0.1:${PORT}/postgres`;
    // Someone else holds the role's only connection.
    const holder = postgres(limitedUrl, { max: 1, onnotice: () => {} });
    await holder`SELECT 1`;
    const config = {
      ...databaseConfig({ DATABASE_URL: limitedUrl, DB_DEADLINE_MS: "3000" }),
      retry: { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 50 },
    };
    const log = captureLog();
    const db = new Database({ name: "limited", driver: openDriver(config), leases: undefined, config, log: log.write });
    try {
      const error = await db.query("SELECT 1").catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "DATABASE_UNAVAILABLE", cause: { code: "53300" } });
      expect(db.breaker.state).toEqual({ state: "closed", failures: 3 });
      expect(log.raw.join("")).not.toContain(PASSWORD);
      await holder.end();
      expect(await db.query("SELECT 1 AS one")).toEqual([{ one: 1 }]);
      expect(db.breaker.state.failures).toBe(0);
    } finally {
      await holder.end();
      await admin.end();
    }
  });
});

describe("transactions under one lease", () => {
  it("commits when fn returns, rolls back when it throws, and gives the slot back", async () => {
    const { db, coordinator } = setup();
    const title = `tx-${Date.now()}`;
    await db.transaction(async (tx) => {
      await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ($1, 'l', 'drama', 'a')", [title]);
    });
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ($1, 'l', 'drama', 'a')", [
          `${title}-rolled-back`,
        ]);
        throw new Error("changed my mind");
      }),
    ).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    const rows = await db.query("SELECT title FROM pitches WHERE title LIKE $1 ORDER BY title", [`${title}%`]);
    expect(rows.map((r) => r.title)).toEqual([title]);
    await expect.poll(async () => (await coordinator.stats()).held).toBe(0);
    expect((await coordinator.stats()).counters.expired).toBe(0);
  });

  it("renews the lease of long work before it expires", async () => {
    const coordinator = memoryCoordinator({ limit: 1, maxQueue: 5, waitMs: 2000, leaseTtlMs: 30_000 });
    const config = databaseConfig({ DATABASE_URL: url });
    const db = new Database({
      name: "renew",
      driver: openDriver(config),
      leases: new Leases(coordinator),
      config,
      leaseTtlMs: 300,
    });
    // 1 s of work under a 300 ms lease: without renewal it would be reaped and its slot handed on.
    const rows = await db.transaction(async (tx) => tx.query("SELECT pg_sleep(1), 1 AS done"));
    expect(rows[0]).toMatchObject({ done: 1 });
    const s = await coordinator.stats();
    expect(s.counters.expired).toBe(0);
    expect(s.counters.released).toBe(1);
  });
});
