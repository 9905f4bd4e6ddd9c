import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { poolSettings } from "../../src/core/index.ts";
import { settingsFromEnv } from "../../src/db/config.ts";
import { enforceLedger } from "../../src/db/enforce.ts";
import { readRoomCounts } from "../../src/db/learn-limit.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { forgetPools, url } from "./helpers.ts";

// LEASE_ENFORCE=terminate on the local adapter and the real Postgres: leased connections carry
// their lease in application_name, a reap terminates the reaped lease's backend before the grant
// of its slot commits, and reconciliation terminates tagged backends whose lease is not held.
const base = `enforce-${process.pid}-${Date.now()}`;
let seq = 0;
const admin = postgres(url, { max: 2, onnotice: () => {} });
const opened: Array<LocalPool<postgres.Sql>> = [];
const raw: postgres.Sql[] = [];
const roles: string[] = [];

/** A local pool of its own, and the application name it runs as. */
async function pool(env: Record<string, string> = {}): Promise<{ p: LocalPool<postgres.Sql>; name: string }> {
  const name = env.APPLICATION_NAME ?? app();
  const p = await localPool<postgres.Sql>(
    { DATABASE_URL: url, LEASE_POOL: `${base}-${++seq}`, LEASE_LIMIT: "3", ...env, APPLICATION_NAME: name },
    { driver },
  );
  opened.push(p);
  return { p, name };
}

function app(): string {
  return `lg-enf-${process.pid}-${++seq}`;
}

/** A connection outside any lease, named `name`, open once this resolves; its backend pid. */
async function connection(name: string, to = url): Promise<{ sql: postgres.Sql; pid: number }> {
  const sql = postgres(to, { max: 1, onnotice: () => {}, connection: { application_name: name } });
  raw.push(sql);
  const [row] = await sql`SELECT pg_backend_pid() AS pid`;
  return { sql, pid: row!.pid as number };
}

async function alive(pid: number): Promise<boolean> {
  const [row] = await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${pid}`;
  return row!.n === 1;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterAll(async () => {
  for (const s of raw) await s.end({ timeout: 1 }).catch(() => {});
  for (const p of opened) await p.close().catch(() => {});
  await forgetPools(admin, `${base}-%`);
  for (const r of roles) {
    await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${r}`;
    await admin.unsafe(`DROP OWNED BY ${r}; DROP ROLE IF EXISTS ${r}`).catch(() => {});
  }
  await admin.end({ timeout: 1 });
});

describe("LEASE_ENFORCE settings", () => {
  it("is off by default; `terminate` sets the grace period to 2 × LEASE_TTL_MS unless given", () => {
    expect(poolSettings({}).enforce).toBeNull();
    expect(poolSettings({ LEASE_ENFORCE: "off" }).enforce).toBeNull();
    expect(poolSettings({ LEASE_ENFORCE: "terminate", LEASE_TTL_MS: "900" }).enforce).toEqual({ graceMs: 1800 });
    expect(poolSettings({ LEASE_ENFORCE: "terminate", LEASE_ENFORCE_GRACE_MS: "250" }).enforce).toEqual({
      graceMs: 250,
    });
  });

  it("allows an APPLICATION_NAME of 54 bytes with `terminate` (bad values: test/db/settings.test.ts)", () => {
    // Without enforcement a longer name is fine; with it, 54 bytes is the most (the tag takes 9 of 63).
    expect(settingsFromEnv({ DATABASE_URL: url, APPLICATION_NAME: "a".repeat(60) }).pool.enforce).toBeNull();
    expect(
      settingsFromEnv({ DATABASE_URL: url, LEASE_ENFORCE: "terminate", APPLICATION_NAME: "a".repeat(54) }).pool.enforce,
    ).not.toBeNull();
  });
});

describe("lease tags in application_name", () => {
  const named = "SELECT current_setting('application_name') AS app";

  it("tags every leased connection with its lease with `terminate`, and counts it as the application's", async () => {
    const { p, name } = await pool({ LEASE_ENFORCE: "terminate" });
    for (const run of [
      () => p.sql(async (sql) => (await sql.unsafe(named))[0]!.app as string),
      async () => (await p.db.query<{ app: string }>(named))[0]!.app,
      () => p.db.transaction(async (tx) => (await tx.query<{ app: string }>(named))[0]!.app),
    ]) {
      let seen: { app: string; lease: string; appConnections: number; drift: number } | undefined;
      await p.sql(async (sql) => {
        const [row] = await sql.unsafe(named);
        const [held] = (await p.operator!.stats()).leases;
        const r = await p.operator!.reconcile();
        seen = { app: row!.app as string, lease: held!.idPrefix, appConnections: r.appConnections, drift: r.drift };
      });
      expect(seen!.app).toBe(`${name}/${seen!.lease}`);
      // The tagged connection is the application's: counted, no drift.
      expect(seen!.appConnections).toBe(1);
      expect(seen!.drift).toBe(0);
      expect(await run()).toMatch(new RegExp(`^${name}/[0-9a-f]{8}$`));
    }
  });

  it("leaves application_name as it is when enforcement is off", async () => {
    const { p, name } = await pool();
    expect(await p.sql(async (sql) => (await sql.unsafe(named))[0]!.app)).toBe(name);
    expect((await p.db.query<{ app: string }>(named))[0]!.app).toBe(name);
  });
});

describe("reconciliation with LEASE_ENFORCE=terminate", () => {
  it("terminates a tagged backend whose lease is not held past the grace period, never a fresh one, a held one or an untagged one", async () => {
    const { p, name } = await pool({ LEASE_ENFORCE: "terminate", LEASE_ENFORCE_GRACE_MS: "400" });
    // A held lease's connection, older than the grace period when the reconciliation runs.
    let heldPid = 0;
    const held = p.sql(async (sql) => {
      heldPid = (await sql`SELECT pg_backend_pid() AS pid`)[0]!.pid as number;
      await sql`SELECT pg_sleep(1.2)`;
      return "held ran to its end";
    });
    const stale = await connection(`${name}/deadbeef`);
    const untagged = await connection(name);
    const otherApp = await connection(`${name}x/deadbeef`);
    await sleep(600);
    const fresh = await connection(`${name}/cafebabe`);
    const r = await p.operator!.reconcile();
    expect(r.terminated).toBe(1);
    expect(await alive(stale.pid)).toBe(false);
    for (const pid of [heldPid, untagged.pid, otherApp.pid, fresh.pid]) expect(await alive(pid)).toBe(true);
    expect(await held).toBe("held ran to its end");
    // Kept for operators: stats and metrics.
    expect((await p.operator!.stats()).reconciliation?.terminated).toBe(1);
    // Past its own grace period, the fresh one goes too.
    await sleep(450);
    expect((await p.operator!.reconcile()).terminated).toBe(1);
    expect(await alive(fresh.pid)).toBe(false);
  });

  it("terminates nothing and reports no count when enforcement is off", async () => {
    const { p, name } = await pool();
    const stale = await connection(`${name}/deadbeef`);
    await sleep(50);
    const r = await p.operator!.reconcile();
    expect(r.terminated).toBeUndefined();
    expect(await alive(stale.pid)).toBe(true);
  });
});

describe("what the application's connections are, with lease tags", () => {
  it("LEASE_LIMIT=auto counts a tagged connection as the application's, not as room taken", async () => {
    const name = app();
    await connection(`${name}/deadbeef`);
    // Only this file uses its test database: nothing else comes or goes between the two reads.
    const mine = await readRoomCounts(admin, name, 1000);
    const others = await readRoomCounts(admin, `${name}-not`, 1000);
    expect(others.othersInDatabase - mine.othersInDatabase).toBe(1);
  });

  it("never terminates while the ledger is in its recovery window (its leases are not all recovered yet)", async () => {
    const name = app();
    const stale = await connection(`${name}/deadbeef`);
    const recovering = { leases: [], recovery: { endsInMs: 1000, recovered: 0 } };
    expect(await enforceLedger(admin, name, [{ leases: [], recovery: null }, recovering], 0)).toBe(0);
    expect(await alive(stale.pid)).toBe(true);
    expect(await enforceLedger(admin, name, [{ leases: [], recovery: null }], 0)).toBe(1);
    expect(await alive(stale.pid)).toBe(false);
  });
});

describe("a reap with LEASE_ENFORCE=terminate (PostgresCoordinator)", () => {
  async function reaped(coordinatorUrl: string) {
    const pool = `${base}-${++seq}`;
    const clients = [postgres(coordinatorUrl, { max: 2, onnotice: () => {} }), postgres(url, { max: 2 })];
    raw.push(...clients);
    const config = { limit: 1, maxQueue: 10, waitMs: 3000, leaseTtlMs: 300 };
    const reaper = new PostgresCoordinator({ sql: clients[0]!, pool, config, enforce: true });
    const holder = new PostgresCoordinator({ sql: clients[1]!, pool, config });
    try {
      const first = await holder.acquire({ holder: "frozen" });
      if (!first.ok) throw new Error(first.code);
      // The holder's process freezes: its coordinator does nothing more, the reaper reaps.
      await holder.close();
      // The frozen holder's tagged backend (a superuser's: only a superuser may signal it).
      const frozen = await connection(`someone/${first.lease.id.slice(0, 8)}#1`);
      const next = await reaper.acquire({ holder: "next", waitMs: 3000 });
      return { next, frozenAlive: await alive(frozen.pid) };
    } finally {
      await reaper.close();
      await holder.close();
    }
  }

  it("terminates the reaped lease's backend before the grant of its slot", async () => {
    const r = await reaped(url);
    expect(r.next.ok).toBe(true);
    // Gone by the time the grant answered: terminated, and waited for, before the grant committed.
    expect(r.frozenAlive).toBe(false);
  });

  it("still reaps and grants when its role may not signal the holder's backend", async () => {
    const role = `lg_enf_${process.pid}_${Date.now().toString(36)}`;
    roles.push(role);
    await admin.unsafe(`CREATE ROLE ${role} LOGIN`);
    await admin.unsafe(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${role}`);
    await admin.unsafe(`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
    await admin.unsafe(`GRANT CREATE, USAGE ON SCHEMA public TO ${role}`);
    // It sees every backend's application_name (else it finds no tagged backend to refuse).
    await admin.unsafe(`GRANT pg_read_all_stats TO ${role}`);
    const as = new URL(url);
    as.username = role;
    as.password = "";
    const r = await reaped(as.toString());
    expect(r.next).toMatchObject({ ok: true });
    // A superuser's backend: refused, left alone, and the transition went on.
    expect(r.frozenAlive).toBe(true);
  });
});
