/**
 * Several pools on one Postgres server: each pool's connections carry a name of its own by
 * default, so a learned limit counts another deployment's connections as room taken, not as its
 * own. On the real Postgres of `npm test`, sampled from `pg_stat_activity`.
 */
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { ensureSchema } from "../../local/schema.ts";
import type { LearnResult, OperatorStats } from "../../src/core/index.ts";
import { poolApplicationName } from "../../src/db/config.ts";
import { createLearners } from "../../src/db/learn-limit.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { forgetPools, until, url } from "./helpers.ts";
import { leasedQuery, loadWithOthers } from "./learned-limit-load.ts";

const tag = `${process.pid}-${Date.now().toString(36)}`;
const admin = postgres(url, { max: 2, onnotice: () => {} });
const database = new URL(url).pathname.slice(1);
const opened: LocalPool[] = [];

async function pool(name: string, env: Record<string, string>): Promise<LocalPool> {
  // No APPLICATION_NAME: the default is what is under test.
  const p = await localPool({ DATABASE_URL: url, LEASE_POOL: `pools-${tag}-${name}`, ...env }, { driver });
  opened.push(p);
  return p;
}

function learned(r: LearnResult) {
  if (!r.ok) throw new Error(`${r.code}: ${r.message}`);
  return r.learned!;
}

/** This database's client connections by application_name. */
async function names(): Promise<Map<string, number>> {
  const rows = await admin<{ name: string; n: number }[]>`
    SELECT application_name AS name, count(*)::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND backend_type = 'client backend' GROUP BY 1`;
  return new Map(rows.map((r) => [r.name, r.n]));
}

// Two pools that learn, on one role with CONNECTION LIMIT 20 (the role's room is what they split).
const ROLE_LIMIT = 20;
const HEADROOM = 2;
const role = `lg_pools_${tag.replace(/-/g, "_")}`;
const roleUrl = (() => {
  const u = new URL(url);
  u.username = role;
  u.password = "";
  return u.toString();
})();
const apps = [`lg-pools-a-${tag}`, `lg-pools-b-${tag}`];
/** An acquire that may not wait and finds no slot it may take. */
const REFUSED = expect.stringMatching(/^(ACQUIRE_TIMEOUT|QUEUE_FULL)$/);

beforeAll(async () => {
  await admin.unsafe(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${ROLE_LIMIT}`);
  await ensureSchema(admin, `pools-${tag}-setup`, { limit: 1, maxQueue: 10, waitMs: 100, leaseTtlMs: 1000 });
  await createLearners(admin);
  await admin.unsafe(
    `GRANT SELECT, INSERT, UPDATE, DELETE ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners TO ${role}`,
  );
  await admin.unsafe(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
});

afterEach(async () => {
  for (const p of opened.splice(0)) await p.close();
});

afterAll(async () => {
  await forgetPools(admin, `pools-${tag}-%`);
  // The registrations of this file's pools: other files' pools must not split with them later.
  const mine = [...apps, poolApplicationName(`${database}/pools-${tag}-auto`)];
  await admin`DELETE FROM leasegate_learners WHERE role = ${role} OR application_name = ANY(${mine})`;
  await admin.unsafe(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`);
  await until(
    async () =>
      (await admin<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${role}`)[0]!.n,
    (n) => n === 0,
    5000,
  );
  await admin.unsafe(
    `REVOKE ALL ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners FROM ${role}`,
  );
  await admin.unsafe(`REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ${role}`);
  await admin.unsafe(`DROP ROLE ${role}`);
  await admin.end();
});

describe("the default application_name is the pool's own", () => {
  it("two pools on one server that keep the default: the auto pool counts the other's 6 connections as room taken", async () => {
    const fixed = await pool("fixed", { LEASE_LIMIT: "6", SLOW_QUERY_MS: "60000" });
    const auto = await pool("auto", { LEASE_LIMIT: "auto", LEASE_LEARN_INTERVAL_MS: "3600000" });
    const fixedName = poolApplicationName(`${database}/pools-${tag}-fixed`);
    const autoName = poolApplicationName(`${database}/pools-${tag}-auto`);
    expect(fixedName).not.toBe(autoName);
    expect(fixedName).toMatch(/^leasegate-[0-9a-f]{8}$/);

    const idle = learned(await auto.operator!.learn!());
    // The fixed pool's six leases, each on a connection held open.
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let open = 0;
    const held = Array.from({ length: 6 }, () =>
      fixed.db.transaction(async (tx) => {
        await tx.query("SELECT 1");
        open++;
        await gate;
      }),
    );
    await until(
      async () => open,
      (n) => n === 6,
      5000,
    );
    const busy = learned(await auto.operator!.learn!());
    const seen = await names();
    release();
    await Promise.all(held);
    // The six are someone else's: the auto pool's room shrank by them (more may have come and gone).
    expect(busy.terms.othersInDatabase - idle.terms.othersInDatabase).toBeGreaterThanOrEqual(6);
    expect(seen.get(fixedName)).toBe(6);
    const stats = (await auto.operator!.stats()) as OperatorStats;
    expect(stats.learned!.terms.othersInDatabase).toBe(busy.terms.othersInDatabase);
  });

  it("APPLICATION_NAME set: the name is used as it is", async () => {
    const p = await localPool(
      { DATABASE_URL: url, LEASE_POOL: `pools-${tag}-named`, APPLICATION_NAME: `named-${tag}` },
      { driver },
    );
    opened.push(p);
    const [row] = await p.db.query<{ name: string }>("SELECT current_setting('application_name') AS name");
    expect(row!.name).toBe(`named-${tag}`);
  });
});

describe("two pools with LEASE_LIMIT=auto on one role", () => {
  async function autoPool(i: number, env: Record<string, string> = {}): Promise<LocalPool> {
    const p = await localPool(
      {
        DATABASE_URL: roleUrl,
        APPLICATION_NAME: apps[i]!,
        LEASE_POOL: `pools-${tag}-split-${i}`,
        LEASE_LIMIT: "auto",
        LEASE_HEADROOM: String(HEADROOM),
        LEASE_LEARN_INTERVAL_MS: "250",
        LEASE_WAIT_MS: "10000",
        SLOW_QUERY_MS: "60000",
        ...env,
      },
      { driver },
    );
    opened.push(p);
    return p;
  }
  const statsOf = async (p: LocalPool) => (await p.operator!.stats()) as OperatorStats;

  it("split the role's room: their limits and headrooms sum to at most it, and each knows of the other", async () => {
    const [a, b] = [await autoPool(0), await autoPool(1)];
    // Steady: each sees the other registered, both coordinators' own 3 connections open, and the
    // limits in force within the split (a CI run read both pools' terms at 2 pools while their
    // limits still summed to 24 − 2 × headroom: the room each had alone).
    const both = async () => [await statsOf(a), await statsOf(b)];
    const { value } = await until(
      both,
      (ss) =>
        ss.every((s) => s.learned?.terms.poolsOfRole === 2 && s.learned.terms.othersOfRole === 6) &&
        ss.reduce((n, s) => n + s.limit + HEADROOM, 0) <= ROLE_LIMIT - 6,
      5000,
    );
    const [sa, sb] = value;
    // Room left by everyone else: the role's limit − the 6 coordinator connections = 14; 7 each.
    expect(sa!.learned!.role).toBe(7);
    expect(sb!.learned!.role).toBe(7);
    expect(sa!.limit + sb!.limit + 2 * HEADROOM).toBeLessThanOrEqual(ROLE_LIMIT - 6);
  });

  it("under load on both, with others of the role coming and going: 0 × 53300 and the role never above its limit", async () => {
    const pools = [await autoPool(0), await autoPool(1)];
    await until(
      async () => Promise.all(pools.map(statsOf)),
      (ss) => ss.every((s) => s.learned?.terms.poolsOfRole === 2),
      5000,
    );
    const calls = pools.map((p, i) => leasedQuery(p, roleUrl, apps[i]!));
    let turn = 0;
    const report = await loadWithOthers({
      call: () => calls[turn++ % 2]!(),
      limit: async () => (await Promise.all(pools.map(statsOf))).reduce((n, s) => n + s.limit, 0),
      url: roleUrl,
      admin,
      scope: { kind: "role", role, limit: ROLE_LIMIT },
      headroom: HEADROOM,
      durationMs: 5000,
      callers: 16,
      othersMax: 3,
      stepMs: 300,
    });
    console.log(`two auto pools on one role, CONNECTION LIMIT ${ROLE_LIMIT}: ${JSON.stringify(report)}`);
    expect(report.requests).toBeGreaterThan(100);
    expect(report.failed53300).toBe(0);
    expect(report.failedOther).toEqual({});
    expect(report.peak).toBeLessThanOrEqual(ROLE_LIMIT);
  }, 30_000);

  it("LEASE_RESERVED and LEASE_BATCH_MAX under the learned limit: never more leases than it, the reserve left free", async () => {
    // A tighter role for this one: its room, not the shared server's, decides however busy the server is.
    await admin.unsafe(`ALTER ROLE ${role} CONNECTION LIMIT 12`);
    const others: postgres.Sql[] = [];
    try {
      // A pool of its own: a learning the last test's pool had in flight when it closed lands in that pool's row.
      const p = await autoPool(0, { LEASE_POOL: `pools-${tag}-reserve`, LEASE_RESERVED: "4", LEASE_BATCH_MAX: "2" });
      // Alone on the role: 12 − its own 3 − headroom 2 = 7, 4 of them reserved for critical callers.
      // (The registrations of the last test's pools lapse within three intervals.)
      const { value: s } = await until(
        () => statsOf(p),
        (x) => x.limit === 7 && x.learned?.bound === "role",
        5000,
      );
      expect(s).toMatchObject({ limit: 7, reserved: 4 });
      const leases = p.leases!;
      const normal = [];
      for (let i = 0; i < 3; i++) normal.push(await leases.acquire({ waitMs: 0 }));
      await expect(leases.acquire({ waitMs: 0 })).rejects.toMatchObject({ code: REFUSED });
      const critical = await leases.acquire({ waitMs: 0, priority: "critical" });
      // Others of the role take 4 connections: the learned limit falls to 3, below the reserve.
      for (let i = 0; i < 4; i++) {
        const sql = postgres(roleUrl, { max: 1, onnotice: () => {}, connection: { application_name: "someone-else" } });
        others.push(sql);
        await sql`SELECT 1`;
      }
      const low = await until(
        () => statsOf(p),
        (x) => x.limit === 3,
        3000,
      );
      // The reserve is clamped to leave one slot of the limit in force; the 4 held stay held.
      expect(low.value).toMatchObject({ limit: 3, reserved: 2, held: 4 });
      for (const l of normal.splice(0)) await leases.release(l);
      await leases.release(critical);
      // Within the limit of 3: one normal lease (3 − the reserve of 2), no batch one, two critical, none more.
      const one = await leases.acquire({ waitMs: 0 });
      await expect(leases.acquire({ waitMs: 0, priority: "batch" })).rejects.toMatchObject({ code: REFUSED });
      const c1 = await leases.acquire({ waitMs: 0, priority: "critical" });
      const c2 = await leases.acquire({ waitMs: 0, priority: "critical" });
      await expect(leases.acquire({ waitMs: 0, priority: "critical" })).rejects.toMatchObject({ code: REFUSED });
      expect((await statsOf(p)).held).toBe(3);
      for (const l of [one, c1, c2]) await leases.release(l);
    } finally {
      for (const sql of others) await sql.end({ timeout: 0 });
      await admin.unsafe(`ALTER ROLE ${role} CONNECTION LIMIT ${ROLE_LIMIT}`);
    }
  });
});

describe("a role that may not write leasegate_learners", () => {
  it("fails the learning with INVALID_CONFIG saying what to run, and the start limit stays", async () => {
    const bare = `${role}_bare`;
    await admin.unsafe(`CREATE ROLE ${bare} LOGIN`);
    await admin.unsafe(
      `GRANT SELECT, INSERT, UPDATE, DELETE ON leasegate_pools, leasegate_leases, leasegate_waiters TO ${bare}`,
    );
    await admin.unsafe(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO ${bare}`);
    const u = new URL(roleUrl);
    u.username = bare;
    try {
      const p = await localPool(
        {
          DATABASE_URL: u.toString(),
          LEASE_POOL: `pools-${tag}-bare`,
          LEASE_LIMIT: "auto",
          LEASE_LEARN_INTERVAL_MS: "3600000",
        },
        { driver },
      );
      opened.push(p);
      const r = await p.operator!.learn!();
      expect(r).toMatchObject({
        ok: false,
        code: "INVALID_CONFIG",
        message: expect.stringContaining("GRANT SELECT, INSERT, UPDATE ON leasegate_learners"),
      });
      expect((await p.operator!.stats()) as OperatorStats).toMatchObject({
        limit: 1,
        limitSource: "configured",
        learnFailure: { code: "INVALID_CONFIG" },
      });
      await p.close();
    } finally {
      opened.splice(0);
      await admin.unsafe(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${bare}'`);
      await admin.unsafe(`REVOKE ALL ON leasegate_pools, leasegate_leases, leasegate_waiters FROM ${bare}`);
      await admin.unsafe(`REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ${bare}`);
      await new Promise((r) => setTimeout(r, 200));
      await admin.unsafe(`DROP ROLE ${bare}`);
    }
  });
});

describe("a PostgresCoordinator's fixed counts", () => {
  const base = { limit: 4, maxQueue: 10, waitMs: 100, leaseTtlMs: 1000 };
  const learn = { headroom: 2, limitMax: 5, intervalMs: 1000, applicationName: "x" };
  it.each([
    ["reserved at the limit", { ...base, reserved: 4 }, null, "reserved"],
    ["batchMax above the limit", { ...base, batchMax: 5 }, null, "batchMax"],
    ["an adaptive floor above the limit", { ...base, adaptive: { floor: 5 } }, null, "adaptive.floor"],
    ["reserved at LEASE_LIMIT_MAX with learn", { ...base, limit: 1, reserved: 5 }, learn, "reserved"],
  ])("refuses %s with INVALID_CONFIG naming it", (_, config, withLearn, name) => {
    expect(() => new PostgresCoordinator({ sql: admin, pool: "fits", config, learn: withLearn })).toThrow(
      expect.objectContaining({ code: "INVALID_CONFIG", message: expect.stringContaining(name) }),
    );
  });
  it("takes any count with learn and no LEASE_LIMIT_MAX: the learned limit clamps it", () => {
    const config = { ...base, limit: 1, reserved: 50, batchMax: 60 };
    expect(
      () => new PostgresCoordinator({ sql: admin, pool: "fits", config, learn: { ...learn, limitMax: null } }),
    ).not.toThrow();
  });
});
