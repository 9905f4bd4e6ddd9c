import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { Kysely, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { driver } from "../../src/drivers/pg.ts";
import { errorResponse } from "../../src/http/respond.ts";
import { LeasedDialect } from "../../src/kysely.ts";
import { workerPool } from "../../src/workers/pool.ts";
import { type Sampler, startSampler } from "../limit/sampler.ts";

// Kysely in real workerd: workerPool with the real coordinator Durable Object (LEASE_LIMIT 3,
// LEASE_MAX_QUEUE 5, LEASE_WAIT_MS 400 in the test config), Hyperdrive's local mode to the real
// Postgres, node-postgres. The leased connections log in as a role with CONNECTION LIMIT 3
// (Hyperdrive's local proxy passes the login through); a sampler on a superuser connection counts
// that role's backends in pg_stat_activity.
const LIMIT = 3;
let admin: pg.Client;
let sampler: Sampler;
let role = "";
let roleUrl = "";

async function connect(): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: env.HYPERDRIVE.connectionString,
    application_name: "lg-kysely-admin",
  });
  client.on("error", () => {});
  await client.connect();
  return client;
}

beforeAll(async () => {
  admin = await connect();
  role = `lg_kysely_wd_${Date.now().toString(36)}_${Math.floor(Math.random() * 1e6)}`;
  await admin.query(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${LIMIT}`);
  const url = new URL(env.HYPERDRIVE.connectionString);
  url.username = role;
  roleUrl = url.toString();
  const probe = await connect();
  sampler = await startSampler(async (text, params) => (await probe.query(text, params)).rows, role);
});

afterAll(async () => {
  await sampler?.stop().catch(() => {});
  await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", [role]);
  for (let i = 0; i < 50; i++) {
    const { rows } = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1", [role]);
    if (rows[0].n === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await admin.query(`DROP ROLE IF EXISTS ${role}`);
  await admin.end();
});

let pools = 0;

/** A request's Kysely: a pool of its own (one coordinator object) logging in as the limited role. */
function request() {
  const ctx = createExecutionContext();
  const pool = workerPool({ ...env, HYPERDRIVE: { ...env.HYPERDRIVE, connectionString: roleUrl } }, ctx, {
    driver,
    pool: `kysely-wd-${Date.now()}-${++pools}`,
  });
  const db = new Kysely<Record<string, never>>({ dialect: new LeasedDialect({ pool, holder: "kysely-workerd" }) });
  return { ctx, pool, db, done: () => waitOnExecutionContext(ctx) };
}

describe("LeasedDialect in workerd", () => {
  it("runs a transaction on one lease and one backend, and gives the slot back once its connection is closed", async () => {
    const { pool, db, done } = request();
    const before = (await pool.leases!.stats()).counters.granted;
    const pids = await db.transaction().execute(async (trx) => {
      const seen: number[] = [];
      for (let i = 0; i < 3; i++)
        seen.push((await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx)).rows[0]!.pid);
      expect((await pool.leases!.stats()).held).toBe(1);
      return seen;
    });
    await done();
    expect(new Set(pids).size).toBe(1);
    const after = await pool.leases!.stats();
    expect(after.counters.granted - before).toBe(1);
    expect(after.held).toBe(0);
    // The database, not the ledger: the transaction's backend is gone.
    await sampler.until((s) => !s.backends.some((b) => b.pid === pids[0]), 3000);
  });

  it("holds 60 concurrent queries to the limit of 3 in pg_stat_activity; every refusal is a 503 with Retry-After", async () => {
    const { db, done } = request();
    const from = sampler.samples.length;
    const outcomes = await Promise.all(
      Array.from({ length: 60 }, () =>
        sql`SELECT 1 AS one FROM pg_sleep(0.05)`.execute(db).then(
          () => ({ ok: true as const }),
          (error: unknown) => ({ ok: false as const, error }),
        ),
      ),
    );
    await done();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const samples = sampler.samples.slice(from);
    const peak = Math.max(0, ...samples.map((s) => s.backends.length));
    const failures = outcomes.filter((o) => !o.ok).map((o) => (o as { error: unknown }).error);
    console.log(
      `[orm] kysely in workerd, 60 concurrent at limit ${LIMIT}: ${60 - failures.length} ok, ${failures.length} refused; peak ${peak} backends in ${samples.length} samples`,
    );
    expect(peak).toBeLessThanOrEqual(LIMIT);
    expect(peak).toBeGreaterThan(0);
    expect(failures.length).toBeLessThan(60);
    for (const error of failures) {
      const response = errorResponse(error);
      expect(["QUEUE_FULL", "ACQUIRE_TIMEOUT"]).toContain(
        ((await response.json()) as { error: { code: string } }).error.code,
      );
      expect(response.status).toBe(503);
      expect(Number(response.headers.get("retry-after"))).toBeGreaterThan(0);
    }
  });
});
