/**
 * Several pools on one Postgres server: each pool's connections carry a name of its own by
 * default, so a learned limit counts another deployment's connections as room taken, not as its
 * own. On the real Postgres of `npm test`, sampled from `pg_stat_activity`.
 */
import postgres from "postgres";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import type { LearnResult, OperatorStats } from "../../src/core/index.ts";
import { poolApplicationName } from "../../src/db/config.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { forgetPools, until, url } from "./helpers.ts";

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

afterEach(async () => {
  for (const p of opened.splice(0)) await p.close();
});

afterAll(async () => {
  await forgetPools(admin, `pools-${tag}-%`);
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
