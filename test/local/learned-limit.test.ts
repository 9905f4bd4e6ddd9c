/**
 * `LEASE_LIMIT=auto` on the real Postgres of `npm test`: a role with `CONNECTION LIMIT 12`, a
 * `localPool` on it, other clients of the same role that come and go.
 */
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { ensureSchema } from "../../local/schema.ts";
import { createLearners } from "../../src/db/learn-limit.ts";
import type { OperatorStats } from "../../src/core/index.ts";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { driver } from "../../src/drivers/postgres.ts";
import { operatorHandler } from "../../src/http/operator.ts";
import { until, url } from "./helpers.ts";
import { leasedQuery, limitOf, loadWithOthers } from "./learned-limit-load.ts";

const ROLE_LIMIT = 12;
const HEADROOM = 2;
const INTERVAL_MS = 400;
const tag = `${process.pid}_${Date.now().toString(36)}`;
const role = `lg_learn_${tag}`;
const app = `lg-learn-app-${tag}`;
const admin = postgres(url, { max: 2, onnotice: () => {} });
const roleUrl = (() => {
  const u = new URL(url);
  u.username = role;
  u.password = "";
  return u.toString();
})();
const pools: LocalPool[] = [];
const others: postgres.Sql[] = [];

async function pool(env: Record<string, string> = {}): Promise<LocalPool> {
  const p = await localPool({
    DATABASE_URL: roleUrl,
    APPLICATION_NAME: app,
    LEASE_POOL: `learn-${tag}-${pools.length}`,
    LEASE_LIMIT: "auto",
    LEASE_HEADROOM: String(HEADROOM),
    LEASE_LEARN_INTERVAL_MS: String(INTERVAL_MS),
    ...env,
  });
  pools.push(p);
  return p;
}

/** Closes the pools and other clients a test opened: each test starts with the role's connections at 0. */
async function closeAll(): Promise<void> {
  for (const p of pools.splice(0)) await p.close();
  for (const s of others.splice(0)) await s.end({ timeout: 0 });
  await until(roleConnections, (c) => c.app + c.own + c.other === 0, 5000);
}

const statsOf = (p: LocalPool) => p.operator!.stats() as Promise<OperatorStats>;

/** Connections of the role as the database counts them now, by whose they are. */
async function roleConnections(): Promise<{ app: number; own: number; other: number }> {
  const [row] = await admin<{ app: number; own: number; other: number }[]>`
    SELECT count(*) FILTER (WHERE application_name = ${app})::int AS app,
           count(*) FILTER (WHERE application_name = ${`${app}-coordinator`})::int AS own,
           count(*) FILTER (WHERE application_name NOT IN (${app}, ${`${app}-coordinator`}))::int AS other
    FROM pg_stat_activity WHERE usename = ${role}`;
  return row!;
}

/** Opens `n` connections of the role under another application_name, each held open. */
async function openOthers(n: number): Promise<postgres.Sql[]> {
  const opened = await Promise.all(
    Array.from({ length: n }, async () => {
      const sql = postgres(roleUrl, { max: 1, onnotice: () => {}, connection: { application_name: "someone-else" } });
      await sql`SELECT 1`;
      return sql;
    }),
  );
  others.push(...opened);
  return opened;
}

beforeAll(async () => {
  await admin.unsafe(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${ROLE_LIMIT}`);
  // The tables exist before the role uses them (it may not create them in a PG15+ public schema).
  await ensureSchema(admin, `learn-${tag}-setup`, { limit: 1, maxQueue: 10, waitMs: 100, leaseTtlMs: 1000 });
  // And the table of pools that learn: the role may not create it either (what the error says to do).
  await createLearners(admin);
  await admin.unsafe(
    `GRANT SELECT, INSERT, UPDATE, DELETE ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners TO ${role}`,
  );
  await admin.unsafe(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
});

afterEach(closeAll);

afterAll(async () => {
  await admin`DELETE FROM leasegate_leases WHERE pool LIKE ${`learn-${tag}-%`}`;
  await admin`DELETE FROM leasegate_waiters WHERE pool LIKE ${`learn-${tag}-%`}`;
  await admin`DELETE FROM leasegate_pools WHERE pool LIKE ${`learn-${tag}-%`}`;
  await admin.unsafe(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`);
  await until(roleConnections, (c) => c.app + c.own + c.other === 0, 5000);
  await admin.unsafe(
    `REVOKE ALL ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners FROM ${role}`,
  );
  await admin.unsafe(`REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ${role}`);
  // Its pools' registrations among the pools that learn: later pools must not split with them.
  await admin`DELETE FROM leasegate_learners WHERE role = ${role}`;
  await admin.unsafe(`DROP ROLE ${role}`);
  await admin.end();
});

describe("LEASE_LIMIT=auto with localPool on a role with CONNECTION LIMIT 12", () => {
  it("learns 12 − headroom − leasegate's own connections; 4 connections of others lower it by 4 within one interval; closing them raises it again", async () => {
    const p = await pool();
    // Steady: the coordinator's control and LISTEN connections are open (each is room taken).
    const first = await until(
      () => statsOf(p),
      (s) => s.learned != null && s.learned.terms.othersOfRole === 3,
      10 * INTERVAL_MS,
    );
    const s = first.value;
    expect(s.limitSource).toBe("learned");
    expect(s.learned!.terms.roleLimit).toBe(ROLE_LIMIT);
    expect(s.learned!.bound).toBe("role");
    expect((await roleConnections()).own).toBe(3);
    const base = ROLE_LIMIT - HEADROOM - 3;
    expect(s.limit).toBe(base);

    const opened = await openOthers(4);
    const lowered = await until(
      () => statsOf(p),
      (x) => x.limit === base - 4,
      3 * INTERVAL_MS,
    );
    // Within one interval of the learning after the connections opened (a poll of 25 ms on top).
    expect(lowered.ms).toBeLessThanOrEqual(INTERVAL_MS + 200);
    expect(lowered.value.learned!.terms.othersOfRole).toBe(7);

    await Promise.all(opened.map((sql) => sql.end({ timeout: 0 })));
    const raised = await until(
      () => statsOf(p),
      (x) => x.limit === base,
      3 * INTERVAL_MS,
    );
    expect(raised.ms).toBeLessThanOrEqual(INTERVAL_MS + 200);
    console.log(
      `learned limit ${base} → ${base - 4} in ${lowered.ms} ms, back to ${base} in ${raised.ms} ms (interval ${INTERVAL_MS} ms)`,
    );
  });

  it("the application's own leased connections are not room taken: the limit holds while leases hold connections", async () => {
    const p = await localPool(
      {
        DATABASE_URL: roleUrl,
        APPLICATION_NAME: app,
        LEASE_POOL: `learn-${tag}-held`,
        LEASE_LIMIT: "auto",
        LEASE_LEARN_INTERVAL_MS: "200",
        SLOW_QUERY_MS: "60000",
      },
      { driver },
    );
    pools.push(p);
    const { value: before } = await until(
      () => statsOf(p),
      (s) => s.learned?.terms.othersOfRole === 3,
      5000,
    );
    const held = Array.from({ length: before.limit }, () =>
      p.sql(async (sql) => {
        await sql`SELECT pg_sleep(0.6)`;
      }),
    );
    await until(roleConnections, (c) => c.app === before.limit, 3000);
    const during = await p.operator!.learn!();
    expect(during).toMatchObject({ limit: before.limit, limitSource: "learned" });
    await Promise.all(held);
  });

  it("an operator's override wins over the learning; null returns to the learned limit", async () => {
    const p = await pool();
    const { value: learned } = await until(
      () => statsOf(p),
      (s) => s.learned != null,
      5000,
    );
    await p.operator!.setLimit(3);
    await new Promise((r) => setTimeout(r, 2 * INTERVAL_MS));
    const held = await statsOf(p);
    expect(held).toMatchObject({ limit: 3, limitSource: "operator", limitOverride: 3 });
    expect(held.learned!.learnedAt).toBeGreaterThan(learned.learned!.learnedAt);
    await p.operator!.setLimit(null);
    const back = await statsOf(p);
    expect(back.limitSource).toBe("learned");
    expect(back.limit).toBe(back.learned!.limit);
  });

  it("learns on an operator's request, and a fixed pool says it cannot", async () => {
    const p = await pool({ LEASE_LEARN_INTERVAL_MS: "3600000" });
    expect((await statsOf(p)).learned).not.toBeNull();
    await openOthers(2);
    const answer = (await p.operator!.learn!()) as { limit: number; learned: { terms: { othersOfRole: number } } };
    const { own, other } = await roleConnections();
    expect(other).toBe(2);
    expect(answer.learned.terms.othersOfRole).toBe(own + 2);
    expect(answer.limit).toBe(ROLE_LIMIT - HEADROOM - own - 2);
    const fixed = await pool({ LEASE_LIMIT: "5" });
    expect(fixed.operator!.learn).toBeUndefined();
    expect((await statsOf(fixed)).limitSource).toBe("configured");
  });

  it("under load, with others coming and going: no request fails with 53300 and the role never holds more than its limit", async () => {
    const interval = 250;
    const p = await pool({ LEASE_LEARN_INTERVAL_MS: String(interval), LEASE_WAIT_MS: "10000", SLOW_QUERY_MS: "60000" });
    const report = await loadWithOthers({
      call: leasedQuery(p, roleUrl, app),
      limit: limitOf(p),
      url: roleUrl,
      admin,
      scope: { kind: "role", role, limit: ROLE_LIMIT },
      headroom: HEADROOM,
      durationMs: 6000,
      callers: 12,
      othersMax: 4,
      stepMs: 300,
    });
    console.log(
      `role CONNECTION LIMIT ${ROLE_LIMIT}, headroom ${HEADROOM}, interval ${interval} ms: ${JSON.stringify(report)}`,
    );
    expect(report.requests).toBeGreaterThan(100);
    expect(report.othersOpened).toBeGreaterThan(5);
    expect(report.failed53300).toBe(0);
    expect(report.failedOther).toEqual({});
    expect(report.peak).toBeLessThanOrEqual(ROLE_LIMIT);
    expect(report.limits.changes).toBeGreaterThan(2);
  }, 30_000);

  it("the operator endpoints: POST learn answers the learning; stats and metrics say where the limit comes from and why", async () => {
    const p = await pool({ LEASE_LEARN_INTERVAL_MS: "3600000" });
    const handler = operatorHandler({ controls: p.operator, token: "t" });
    const call = async (path: string, method = "GET") =>
      (await handler(
        new Request(`http://x/__coordinator/${path}`, { method, headers: { authorization: "Bearer t" } }),
      ))!;
    const learnt = await call("learn", "POST");
    expect(learnt.status).toBe(200);
    const body = (await learnt.json()) as {
      limit: number;
      limitSource: string;
      learned: { bound: string; terms: { roleLimit: number } };
    };
    expect(body).toMatchObject({
      limitSource: "learned",
      learned: { bound: "role", terms: { roleLimit: ROLE_LIMIT } },
    });
    const stats = (await (await call("stats")).json()) as OperatorStats;
    expect(stats).toMatchObject({ limit: body.limit, limitSource: "learned", learnFailure: null });
    const families = new Map(parsePrometheusTextFormat(await (await call("metrics")).text()).map((f) => [f.name, f]));
    const value = (name: string, labels: Record<string, string> = {}) =>
      families
        .get(name)
        ?.metrics.find((m) =>
          Object.entries(labels).every(([k, v]) => (m as { labels?: Record<string, string> }).labels?.[k] === v),
        )?.value;
    expect(value("leasegate_limit_source", { source: "learned" })).toBe("1");
    expect(value("leasegate_limit_source", { source: "configured" })).toBe("0");
    expect(value("leasegate_learned_limit_leases")).toBe(String(body.limit));
    // How old the value in force is, and among how many pools the room is split.
    expect(Number(value("leasegate_learned_age_seconds"))).toBeGreaterThanOrEqual(0);
    expect(Number(value("leasegate_learned_age_seconds"))).toBeLessThan(60);
    expect(stats.learnedAgeMs).toBeGreaterThanOrEqual(0);
    expect(Number(value("leasegate_learned_pools"))).toBeGreaterThanOrEqual(1);
    expect(value("leasegate_learned_room_connections", { scope: "role" })).toBe(String(body.limit + HEADROOM));
    expect(value("leasegate_learned_others_connections", { scope: "role" })).toBe(
      String(ROLE_LIMIT - HEADROOM - body.limit),
    );
    // A fixed pool has nothing to learn: a clear error with a stable code, state unchanged.
    const fixed = await pool({ LEASE_LIMIT: "5" });
    const refused = await operatorHandler({ controls: fixed.operator, token: "t" })(
      new Request("http://x/__coordinator/learn", { method: "POST", headers: { authorization: "Bearer t" } }),
    );
    expect(refused!.status).toBe(400);
    expect(((await refused!.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
  });
});
