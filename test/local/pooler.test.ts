import postgres, { type Sql } from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { settingsFromEnv } from "../../src/db/config.ts";
import { countConnections } from "../../src/db/reconcile.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { TEST_URL } from "../db/helpers.ts";
import { forgetPools } from "./helpers.ts";

// `DB_POOLER=transaction`: what cannot mean the same behind a transaction-mode pooler is refused
// at start, and reconciliation counts what a pooler's server connections mean. The pooler itself
// (PgBouncer) runs in `npm run bench:pooler`; nothing here needs one: the database side of a pooler
// is connections named by the application that sit idle between transactions, made here directly.
const base = `pooler-${process.pid}-${Date.now()}`;
const pools: LocalPool<Sql>[] = [];
const opened: Sql[] = [];
let seq = 0;
// Nothing listens here: a pool whose leased connections would go there still starts, because the
// coordinator uses DATABASE_DIRECT_URL.
const UNREACHABLE_POOLER = "postgres://postgres@127.0.0.1:18799/postgres";

afterAll(async () => {
  for (const pool of pools) await pool.close();
  await Promise.all(opened.map((sql) => sql.end({ timeout: 1 })));
  const admin = postgres(TEST_URL, { max: 1, onnotice: () => {} });
  await forgetPools(admin, `${base}-%`);
  await admin.end();
});

function configError(env: Record<string, string>): unknown {
  try {
    settingsFromEnv({ DATABASE_URL: TEST_URL, ...env });
  } catch (error) {
    return error;
  }
  return undefined;
}

describe("DB_POOLER settings", () => {
  it("accepts none and transaction, refuses anything else naming the variable", () => {
    expect(settingsFromEnv({ DATABASE_URL: TEST_URL }).database.pooler).toBe("none");
    expect(settingsFromEnv({ DATABASE_URL: TEST_URL, DB_POOLER: "transaction" }).database.pooler).toBe("transaction");
    expect(configError({ DB_POOLER: "session" })).toMatchObject({ code: "INVALID_CONFIG", message: /DB_POOLER/ });
  });

  it("refuses LEASE_LIMIT=auto behind a pooler unless LEASE_LIMIT_MAX bounds it by the pooler's size", () => {
    const refused = configError({ DB_POOLER: "transaction", LEASE_LIMIT: "auto" });
    expect(refused).toMatchObject({ code: "INVALID_CONFIG", message: /LEASE_LIMIT_MAX.*default_pool_size/ });
    const capped = settingsFromEnv({
      DATABASE_URL: TEST_URL,
      DB_POOLER: "transaction",
      LEASE_LIMIT: "auto",
      LEASE_LIMIT_MAX: "8",
    });
    expect(capped.pool.learn?.limitMax).toBe(8);
    // Without a pooler, auto needs no cap.
    expect(configError({ LEASE_LIMIT: "auto" })).toBeUndefined();
  });

  it("refuses LEASE_ENFORCE=terminate behind a pooler", () => {
    const refused = configError({ DB_POOLER: "transaction", LEASE_ENFORCE: "terminate" });
    expect(refused).toMatchObject({ code: "INVALID_CONFIG", message: /LEASE_ENFORCE.*DB_POOLER/ });
  });
});

describe("localPool behind a pooler", () => {
  it("needs DATABASE_DIRECT_URL for the coordinator's session", async () => {
    const env = { DATABASE_URL: UNREACHABLE_POOLER, DB_POOLER: "transaction", LEASE_POOL: `${base}-${++seq}` };
    await expect(localPool(env, { driver })).rejects.toMatchObject({
      code: "INVALID_CONFIG",
      message: /DATABASE_DIRECT_URL/,
    });
    await expect(localPool({ ...env, DATABASE_DIRECT_URL: "mysql://x" }, { driver })).rejects.toMatchObject({
      code: "INVALID_CONFIG",
      message: /DATABASE_DIRECT_URL/,
    });
  });

  it("keeps the coordinator on DATABASE_DIRECT_URL and grants leases while DATABASE_URL is the pooler", async () => {
    const pool = await localPool(
      {
        DATABASE_URL: UNREACHABLE_POOLER,
        DATABASE_DIRECT_URL: TEST_URL,
        DB_POOLER: "transaction",
        LEASE_POOL: `${base}-${++seq}`,
        LEASE_LIMIT: "2",
      },
      { driver },
    );
    pools.push(pool);
    const lease = await pool.leases!.acquire();
    expect((await pool.leases!.stats()).held).toBe(1);
    await pool.leases!.release(lease);
  });
});

describe("reconciliation behind a pooler", () => {
  it("counts only the application's connections in a transaction, not the pooler's idle ones", async () => {
    const app = `${base}-app`;
    // What a pooler leaves in pg_stat_activity: server connections named by the last client, idle.
    const idle = Array.from({ length: 3 }, () =>
      postgres(TEST_URL, { max: 1, onnotice: () => {}, connection: { application_name: app } }),
    );
    opened.push(...idle);
    await Promise.all(idle.map((sql) => sql`SELECT 1`));
    // And one running a leased transaction.
    const busy = postgres(TEST_URL, { max: 1, onnotice: () => {}, connection: { application_name: app } });
    opened.push(busy);
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    const running = busy.begin(async (tx) => {
      await tx`SELECT 1`;
      await released;
    });
    const observer = postgres(TEST_URL, { max: 1, onnotice: () => {} });
    opened.push(observer);
    try {
      await expect.poll(async () => (await countConnections(observer, app)).appConnections).toBe(4);
      const pooled = await countConnections(observer, app, "transaction");
      expect(pooled.appConnections).toBe(1);
      // The role's count (the observer's role is the test's) leaves the idle ones out too.
      const direct = await countConnections(observer, app);
      expect(direct.roleConnections - pooled.roleConnections).toBeGreaterThanOrEqual(3);
    } finally {
      release();
      await running;
    }
    await expect.poll(async () => (await countConnections(observer, app, "transaction")).appConnections).toBe(0);
  });

  it("reconciles a pooled pool's leases against the transactions in flight", async () => {
    const name = `${base}-${++seq}`;
    const app = `${base}-rec`;
    const pool = await localPool(
      {
        DATABASE_URL: TEST_URL,
        DATABASE_DIRECT_URL: TEST_URL,
        DB_POOLER: "transaction",
        LEASE_POOL: name,
        LEASE_LIMIT: "4",
        APPLICATION_NAME: app,
      },
      { driver },
    );
    pools.push(pool);
    const idle = postgres(TEST_URL, { max: 1, onnotice: () => {}, connection: { application_name: app } });
    opened.push(idle);
    await idle`SELECT 1`;
    const r = await pool.operator!.reconcile();
    // The idle connection named by the application is the pooler's: no drift.
    expect(r).toMatchObject({ held: 0, appConnections: 0, drift: 0, status: "ok" });
  });
});
