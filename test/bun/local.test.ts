/**
 * `bun test test/bun/` (run by `npm test`): the local adapter, Bun's own SQL client as a driver and
 * the example app on Bun, against the real Postgres of `npm test` (LEASEGATE_TEST_DATABASE_URL,
 * else DATABASE_URL). Uses only `bun:test`'s `test` and node:assert; the limit is watched in
 * `pg_stat_activity`.
 */
import assert from "node:assert/strict";
import { test } from "bun:test";
import postgres from "postgres";
import type { Sql } from "postgres";
import { localPool } from "../../local/pool.ts";
import { createLocalApp } from "../../examples/pitches/src/server.ts";
import { isLeaseError } from "../../src/core/index.ts";
import type { DriverModule } from "../../src/db/driver.ts";
import { driver } from "../../src/drivers/bun.ts";
import { startSampler } from "../limit/sampler.ts";

const url =
  process.env.LEASEGATE_TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const base = `bun-${process.pid}-${Date.now()}`;

async function withAdmin<T>(fn: (sql: Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end();
  }
}

async function forget(pool: string): Promise<void> {
  await withAdmin(async (sql) => {
    for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"])
      await sql`DELETE FROM ${sql(t)} WHERE pool = ${pool}`;
  });
}

test("localPool with Bun's SQL client holds its limit of 2 in pg_stat_activity under 8 concurrent callers", async () => {
  const pool = `${base}-limit`;
  const app = `${base}-limit`.slice(0, 50);
  const p = await localPool(
    { DATABASE_URL: url, LEASE_POOL: pool, LEASE_LIMIT: "2", LEASE_WAIT_MS: "10000", APPLICATION_NAME: app },
    { driver },
  );
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  const watch = await startSampler((text, params) => admin.unsafe(text, params as never[]), { app });
  try {
    const rows = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        p.db.query<{ n: number }>("SELECT $1::int AS n FROM pg_sleep(0.2)", [i], { holder: `bun-${i}` }),
      ),
    );
    assert.deepEqual(
      rows.map((r) => r[0]!.n),
      [0, 1, 2, 3, 4, 5, 6, 7],
    );
    // The driver's own client through pool.sql: a Bun SQL tagged template.
    const [row] = await p.sql((sql) => sql`SELECT ${"bun"}::text AS runtime`);
    assert.equal((row as { runtime: string }).runtime, "bun");
    await watch.stop();
    assert.ok(watch.peak() >= 1, "the sampler saw the leased backends");
    assert.ok(watch.peak() <= 2, `peak ${watch.peak()} backends at limit 2`);
    const stats = await p.leases!.stats();
    assert.equal(stats.held, 0);
    assert.equal(stats.counters.granted, 9);
  } finally {
    await watch.stop().catch(() => {});
    await admin.end();
    await p.close();
    await forget(pool);
  }
}, 30_000);

test("a deadline stops the statement in the database on Bun's SQL client: DEADLINE_EXCEEDED at ~1 s, the backend gone, the slot free", async () => {
  const pool = `${base}-deadline`;
  const app = `${base}-deadline`.slice(0, 50);
  // No statement_timeout from the startup: the cancel alone must stop the statement.
  const p = await localPool(
    {
      DATABASE_URL: url,
      LEASE_POOL: pool,
      LEASE_LIMIT: "1",
      APPLICATION_NAME: app,
      DB_DEADLINE_MS: "1000",
      DB_STATEMENT_TIMEOUT: "off",
    },
    { driver },
  );
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  const watch = await startSampler((text, params) => admin.unsafe(text, params as never[]), { app });
  try {
    const started = Date.now();
    const error = await p.db.query("SELECT pg_sleep(5)").then(
      () => undefined,
      (e: unknown) => e,
    );
    const answeredAt = Date.now();
    assert.ok(isLeaseError(error), String(error));
    assert.equal(error.code, "DEADLINE_EXCEEDED");
    assert.ok(answeredAt - started < 2500, `answered after ${answeredAt - started} ms`);
    // Gone from the database, not only from the ledger: the sampler sees no backend soon after.
    const goneMs = await watch.goneAfter(answeredAt);
    assert.ok(goneMs < 1000, `the backend lived ${goneMs} ms past the answer`);
    assert.equal((await p.leases!.stats()).held, 0);
  } finally {
    await watch.stop().catch(() => {});
    await admin.end();
    await p.close();
    await forget(pool);
  }
}, 30_000);

test("the example app answers the HTTP contract on Bun with Bun's SQL client", async () => {
  const pool = `${base}-http`;
  const app = await createLocalApp(
    { DATABASE_URL: url, LEASE_POOL: pool, LEASE_LIMIT: "2", DEBUG_TOKEN: "bun-token" },
    driver as unknown as DriverModule<Sql>,
  );
  try {
    const health = await app.fetch(new Request("http://local/health"));
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { database: string }).database, "up");
    const trending = await app.fetch(new Request("http://local/api/pitches/trending?limit=3"));
    assert.equal(trending.status, 200);
    assert.equal(((await trending.json()) as { pitches: unknown[] }).pitches.length, 3);
    const created = await app.fetch(
      new Request("http://local/api/pitches", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          title: "On Bun",
          logline: "A pitch written through Bun.SQL.",
          author: "bun",
          genre: "comedy",
        }),
      }),
    );
    assert.equal(created.status, 201);
    const { pitch } = (await created.json()) as { pitch: { id: string | number; title: string; view_count: number } };
    assert.equal(pitch.title, "On Bun");
    const viewed = await app.fetch(new Request(`http://local/api/pitches/${pitch.id}`));
    assert.equal(viewed.status, 200);
    assert.equal(((await viewed.json()) as { pitch: { view_count: number } }).pitch.view_count, 1);
    const bad = await app.fetch(new Request("http://local/api/pitches/abc"));
    assert.equal(bad.status, 400);
    const stats = await app.fetch(
      new Request("http://local/__coordinator/stats", { headers: { authorization: "Bearer bun-token" } }),
    );
    const body = (await stats.json()) as { pool: string; held: number; counters: { granted: number } };
    assert.equal(body.pool, pool);
    assert.equal(body.held, 0);
    // /health, /trending, the insert and the view: one lease each; bad input takes none.
    assert.equal(body.counters.granted, 4);
    await withAdmin((sql) => sql`DELETE FROM pitches WHERE id = ${pitch.id}`);
  } finally {
    await app.close();
    await forget(pool);
  }
}, 30_000);

test("Bun's errors are classified as the other drivers' are: a refused connection is DATABASE_UNAVAILABLE, a bad query DATABASE_ERROR with its SQLSTATE", async () => {
  const refused = await localPool(
    { DATABASE_URL: "postgres://postgres@127.0.0.1:1/postgres", COORDINATOR: "off", DB_DEADLINE_MS: "1000" },
    { driver },
  );
  try {
    const error = await refused.db.query("SELECT 1").then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(isLeaseError(error), String(error));
    assert.equal(error.code, "DATABASE_UNAVAILABLE");
  } finally {
    await refused.close();
  }
  const p = await localPool({ DATABASE_URL: url, COORDINATOR: "off" }, { driver });
  // The log line of the failure: its codes and names, never the server's message (it may quote row data).
  const lines: string[] = [];
  const log = console.log;
  console.log = (line: unknown) => lines.push(String(line));
  try {
    const error = await p.db.query("SELECT * FROM no_such_table_here").then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(isLeaseError(error), String(error));
    assert.equal(error.code, "DATABASE_ERROR");
    assert.match(error.message, /42P01/);
    // The same through Bun's own client (`pool.sql`), read through the driver's `errorOf`.
    const own = await p
      .sql((sql) => sql`SELECT * FROM no_such_table_here`)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(isLeaseError(own), String(own));
    assert.equal(own.code, "DATABASE_ERROR");
    assert.match(own.message, /42P01/);
  } finally {
    console.log = log;
    await p.close();
  }
  const failures = lines.filter((l) => l.includes('"database_error"'));
  assert.equal(failures.length, 2, lines.join("\n"));
  for (const line of failures) {
    assert.match(line, /"code":"42P01"/);
    assert.doesNotMatch(line, /does not exist|no_such_table_here/);
  }
});

test("DATABASE_CLIENT=bun loads Bun's SQL client by name from the driver registry", async () => {
  const pool = `${base}-by-name`;
  const p = await localPool({ DATABASE_URL: url, LEASE_POOL: pool, LEASE_LIMIT: "1", DATABASE_CLIENT: "bun" });
  try {
    // Bun's SQL client, not postgres.js: it has Bun's distributed transactions.
    const bunClient = await p.sql(async (client) => typeof (client as { beginDistributed?: unknown }).beginDistributed);
    assert.equal(bunClient, "function");
    assert.equal((await p.leases!.stats()).held, 0);
  } finally {
    await p.close();
    await forget(pool);
  }
});

test("localPool's default driver (postgres.js) runs on Bun too", async () => {
  const pool = `${base}-default`;
  const p = await localPool({ DATABASE_URL: url, LEASE_POOL: pool, LEASE_LIMIT: "1" });
  try {
    assert.deepEqual([...(await p.db.query("SELECT 1 AS one"))], [{ one: 1 }]);
    assert.equal((await p.leases!.stats()).held, 0);
  } finally {
    await p.close();
    await forget(pool);
  }
}, 30_000);
