/**
 * `deno task test`: the local adapter and server on Deno against the real Postgres of `npm test`
 * (LEASEGATE_TEST_DATABASE_URL, else DATABASE_URL). Uses only Deno.test and node:assert, so no
 * registry beyond npm is needed.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { localPool } from "../../local/pool.ts";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { createLocalApp } from "../../examples/pitches/src/server.ts";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";

/** The Deno APIs used here (the project's type check runs with Node's types). */
declare const Deno: {
  env: { get(name: string): string | undefined };
  test(t: { name: string; fn: () => Promise<void>; sanitizeOps?: boolean; sanitizeResources?: boolean }): void;
  pid: number;
};

const url =
  Deno.env.get("LEASEGATE_TEST_DATABASE_URL") ??
  Deno.env.get("DATABASE_URL") ??
  "postgres://postgres@127.0.0.1:5432/postgres";
const base = `deno-${Deno.pid}-${Date.now()}`;
// postgres.js keeps sockets and timers between queries; each test ends its clients itself.
const loose = { sanitizeOps: false, sanitizeResources: false };

async function cleanup(sql: postgres.Sql, pool: string): Promise<void> {
  for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"])
    await sql`DELETE FROM ${sql(t)} WHERE pool = ${pool}`;
}

Deno.test({
  name: "two coordinators share one limit: FIFO grant on release (NOTIFY), fences increase, deadline timeout",
  ...loose,
  fn: async () => {
    const pool = `${base}-fifo`;
    // Strict arrival order (the default newest-first mode may serve w2 first under a standing queue).
    const config = { limit: 1, maxQueue: 10, waitMs: 2000, leaseTtlMs: 5000, queue: "fifo" as const };
    const a = postgres(url, { max: 2, onnotice: () => {} });
    const b = postgres(url, { max: 2, onnotice: () => {} });
    const ca = new PostgresCoordinator({ sql: a, pool, config });
    const cb = new PostgresCoordinator({ sql: b, pool, config });
    try {
      const one = new Leases(ca);
      const two = new Leases(cb);
      const held = await one.acquire({ holder: "first" });
      const order: string[] = [];
      // Test-side polling (the coordinator never polls): until the queue holds n waiters.
      const untilWaiting = async (n: number) => {
        while ((await one.stats()).waiting < n) await new Promise((r) => setTimeout(r, 5));
      };
      const w1 = two.acquire({ holder: "w1" }).then((l) => {
        order.push("w1");
        return l;
      });
      await untilWaiting(1);
      const w2 = one.acquire({ holder: "w2" }).then((l) => {
        order.push("w2");
        return l;
      });
      await untilWaiting(2);
      const started = Date.now();
      const timedOut = await two.acquire({ waitMs: 200 }).then(
        () => "granted",
        (e) => (isLeaseError(e) ? e.code : String(e)),
      );
      assert.equal(timedOut, "ACQUIRE_TIMEOUT");
      assert.ok(Date.now() - started >= 200);
      await one.release(held);
      const g1 = await w1;
      await two.release(g1);
      const g2 = await w2;
      assert.deepEqual(order, ["w1", "w2"]);
      assert.ok(held.fence < g1.fence && g1.fence < g2.fence);
      await one.release(g2);
      const stats = await one.stats();
      assert.equal(stats.held, 0);
      assert.equal(stats.counters.granted, 3);
      assert.equal(stats.counters.timedOut, 1);
    } finally {
      await ca.close();
      await cb.close();
      await cleanup(a, pool);
      await a.end();
      await b.end();
    }
  },
});

Deno.test({
  name: "the local server answers the HTTP contract on Deno",
  ...loose,
  fn: async () => {
    const pool = `${base}-http`;
    const app = await createLocalApp({
      DATABASE_URL: url,
      LEASE_POOL: pool,
      LEASE_LIMIT: "2",
      DEBUG_TOKEN: "deno-token",
    });
    try {
      const health = await app.fetch(new Request("http://local/health"));
      assert.equal(health.status, 200);
      const h = (await health.json()) as {
        status: string;
        database: string;
        coordinator: string;
        breaker: { state: string };
      };
      assert.deepEqual([h.status, h.database, h.coordinator, h.breaker.state], ["ok", "up", "up", "closed"]);
      const trending = await app.fetch(new Request("http://local/api/pitches/trending?limit=3"));
      assert.equal(trending.status, 200);
      assert.equal(((await trending.json()) as { pitches: unknown[] }).pitches.length, 3);
      const bad = await app.fetch(new Request("http://local/api/pitches/abc"));
      assert.equal(bad.status, 400);
      assert.equal(((await bad.json()) as { error: { code: string } }).error.code, "INVALID_ARGUMENT");
      const denied = await app.fetch(new Request("http://local/__coordinator/stats"));
      assert.equal(denied.status, 401);
      const stats = await app.fetch(
        new Request("http://local/__coordinator/stats", { headers: { authorization: "Bearer deno-token" } }),
      );
      const body = (await stats.json()) as { pool: string; limit: number; held: number; counters: { granted: number } };
      assert.equal(body.pool, pool);
      assert.equal(body.limit, 2);
      assert.equal(body.held, 0);
      // One lease for /health and one for /trending; bad input is refused before any lease.
      assert.equal(body.counters.granted, 2);
    } finally {
      await app.close();
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      await cleanup(sql, pool);
      await sql.end();
    }
  },
});

Deno.test({
  name: "operator controls and priority classes on Deno: pause, live limit, metrics, critical first",
  ...loose,
  fn: async () => {
    const pool = `${base}-operator`;
    const app = await createLocalApp({
      DATABASE_URL: url,
      LEASE_POOL: pool,
      LEASE_LIMIT: "2",
      LEASE_WAIT_MS: "200",
      DEBUG_TOKEN: "deno-token",
    });
    const sql = postgres(url, { max: 3, onnotice: () => {} });
    const other = new PostgresCoordinator({
      sql,
      pool,
      config: { limit: 2, maxQueue: 10, waitMs: 2000, leaseTtlMs: 5000 },
    });
    const post = async (path: string, body?: unknown) => {
      const headers = { authorization: "Bearer deno-token", "content-type": "application/json" };
      const r = await app.fetch(
        new Request(`http://local/__coordinator/${path}`, {
          method: "POST",
          headers,
          body: body === undefined ? null : JSON.stringify(body),
        }),
      );
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    };
    try {
      assert.deepEqual((await post("pause")).body, { pool, ok: true, paused: true, limit: 2, limitOverride: null });
      assert.equal((await app.fetch(new Request("http://local/api/pitches/trending?limit=1"))).status, 503);
      assert.equal((await post("resume")).body.paused, false);
      assert.equal((await post("limit", { limit: 1 })).body.limitOverride, 1);
      const leases = new Leases(other);
      const held = await leases.acquire({ holder: "held" });
      const order: string[] = [];
      const normal = leases.acquire({ holder: "normal" }).then((l) => {
        order.push("normal");
        return l;
      });
      while ((await other.stats()).waiting < 1) await new Promise((r) => setTimeout(r, 5));
      const critical = leases.acquire({ holder: "critical", priority: "critical" }).then((l) => {
        order.push("critical");
        return l;
      });
      while ((await other.stats()).waiting < 2) await new Promise((r) => setTimeout(r, 5));
      await leases.release(held);
      await leases.release(await critical);
      await leases.release(await normal);
      assert.deepEqual(order, ["critical", "normal"]);
      const metrics = await app.fetch(
        new Request("http://local/__coordinator/metrics", { headers: { authorization: "Bearer deno-token" } }),
      );
      assert.equal(metrics.status, 200);
      assert.match(await metrics.text(), /leasegate_limit_leases\{pool="[^"]+"\} 1/);
    } finally {
      await other.close();
      await app.close();
      await cleanup(sql, pool);
      await sql.end();
    }
  },
});

Deno.test({
  name: "a deadline reaches Postgres on Deno: DEADLINE_EXCEEDED at ~1 s, the statement cancelled (node:net), the slot free",
  ...loose,
  fn: async () => {
    const app = `${base}-deadline`;
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    // DB_STATEMENT_TIMEOUT=off: no statement_timeout, no check interval; only the cancel request can
    // stop the statement before its 5 s.
    const pool = await localPool({
      DATABASE_URL: url,
      APPLICATION_NAME: app,
      LEASE_POOL: app,
      LEASE_LIMIT: "1",
      DB_DEADLINE_MS: "1000",
      DB_STATEMENT_TIMEOUT: "off",
    });
    try {
      const started = Date.now();
      const error = await pool.db.query("SELECT pg_sleep(5)").catch((e: unknown) => e);
      const answeredAt = Date.now();
      assert.ok(isLeaseError(error));
      assert.equal(error.code, "DEADLINE_EXCEEDED");
      assert.equal(error.executed, "maybe");
      assert.ok(answeredAt - started >= 990 && answeredAt - started < 1300, `answered at ${answeredAt - started} ms`);
      let gone = -1;
      while (Date.now() - answeredAt < 3000) {
        const [row] = await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${app}`;
        if (row!.n === 0) {
          gone = Date.now() - answeredAt;
          break;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(gone >= 0 && gone <= 150, `backend gone ${gone} ms after the answer`);
      assert.deepEqual([...(await pool.db.query("SELECT 1 AS one"))], [{ one: 1 }]);
    } finally {
      await pool.close();
      await cleanup(admin, app);
      await admin.end();
    }
  },
});
