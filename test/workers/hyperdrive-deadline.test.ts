import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import pg from "pg";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { type DriverModule, bindDriver } from "../../src/db/driver.ts";
import { leasedSql } from "../../src/db/pool.ts";
import { driver as pgDriver } from "../../src/drivers/pg.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";
import { startSampler } from "../limit/sampler.ts";

// What reaches Postgres through Hyperdrive's local mode, in real workerd: a leased connection's
// startup parameters (statement_timeout from the deadline, client_connection_check_interval), and
// the cancel request that stops a statement when the deadline passes. Both drivers a Worker uses.
const APP = `hd-deadline-${Date.now()}`;
let admin: pg.Client;

beforeAll(async () => {
  admin = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString, application_name: `${APP}-admin` });
  admin.on("error", () => {});
  await admin.connect();
});
afterAll(async () => {
  await admin.end();
});

function database(client: "postgres" | "pg", app: string, statementTimeout = "startup") {
  const config = databaseConfig({
    ...env,
    DATABASE_CLIENT: client,
    APPLICATION_NAME: app,
    DB_DEADLINE_MS: "5000",
    DB_STATEMENT_TIMEOUT: statementTimeout,
  });
  const leases = new Leases(env.COORDINATOR_DO.getByName(`hd-deadline-${app}`));
  return new Database({ name: app, driver: openDriver(config), leases, config, log: () => {} });
}

describe.each(["postgres", "pg"] as const)("through the HYPERDRIVE binding (local mode) with %s", (client) => {
  it("a leased connection starts with statement_timeout from the deadline and client_connection_check_interval 100ms", async () => {
    const db = database(client, `${APP}-${client}-settings`);
    const [row] = await db.query<{ st: string; cc: string; it: string }>(
      "SELECT current_setting('statement_timeout') AS st, current_setting('client_connection_check_interval') AS cc, current_setting('idle_in_transaction_session_timeout') AS it",
    );
    // What was left of the 5 s deadline at connect: 4.9xx s, shown as ms (or "5s" when exact).
    expect(row!.st).toMatch(/^4\d{3}ms$|^5s$/);
    expect(row!.it).toBe(row!.st);
    expect(row!.cc).toBe("100ms");
  });
});

// Through the front door a Worker uses: workerPool(env, ctx, { driver }), its `db` and its `sql`
// (the driver's own client). With DB_STATEMENT_TIMEOUT=off the connection has no check interval:
// closing it alone would leave the statement running its 5 s. Only the cancel request, through
// Hyperdrive, stops it this soon.
const DRIVERS = { postgres: postgresDriver, pg: pgDriver } as const;
const CASES = [
  ["postgres", "db"],
  ["postgres", "sql"],
  ["pg", "db"],
  ["pg", "sql"],
] as const;
let seq = 0;

function pool(client: keyof typeof DRIVERS, vars: Record<string, string> = {}) {
  const app = `${APP}-${client}-${++seq}`;
  const p = workerPool(
    {
      ...env,
      LEASE_POOL: `hd-deadline-${Date.now()}-${seq}`,
      LEASE_LIMIT: "1",
      LEASE_TTL_MS: "900",
      APPLICATION_NAME: app,
      DB_STATEMENT_TIMEOUT: "off",
      DB_DEADLINE_MS: "1000",
      ...vars,
    },
    createExecutionContext(),
    { driver: DRIVERS[client] as DriverModule<unknown> },
  );
  return { pool: p, app };
}

function sleep(p: ReturnType<typeof pool>["pool"], client: keyof typeof DRIVERS, door: "db" | "sql") {
  if (door === "db") return p.db.query("SELECT pg_sleep(5)");
  return p.sql(async (c) =>
    client === "postgres"
      ? (c as postgres.Sql).unsafe("SELECT pg_sleep(5)")
      : (await (c as pg.Client).query("SELECT pg_sleep(5)")).rows,
  );
}

/** Backends of `app` as Postgres counts them, sampled every 10 ms until `stop()`. */
const sampler = (app: string) =>
  startSampler(async (text, params) => (await admin.query(text, params)).rows as Array<Record<string, unknown>>, {
    app,
  });

describe.each(CASES)("workerPool with leasegate/%s, pool.%s, through Hyperdrive's local mode", (client, door) => {
  it("a pg_sleep(5) with a 1000 ms deadline: DEADLINE_EXCEEDED at ~1 s, its cancel request passes Hyperdrive, the backend gone", async () => {
    const { pool: p, app } = pool(client);
    const watch = await sampler(app);
    const started = Date.now();
    const error = await sleep(p, client, door).catch((e: unknown) => e);
    const answeredAt = Date.now();
    expect(isLeaseError(error) && { code: error.code, executed: error.executed }).toEqual({
      code: "DEADLINE_EXCEEDED",
      executed: "maybe",
    });
    expect(answeredAt - started).toBeGreaterThanOrEqual(990);
    expect(answeredAt - started).toBeLessThan(1300);
    const goneMs = await watch.goneAfter(answeredAt);
    await watch.stop();
    expect(watch.peak()).toBe(1);
    expect(goneMs).toBeLessThanOrEqual(150);
    await expect.poll(async () => (await p.leases!.stats()).held, { timeout: 1000 }).toBe(0);
    console.log(
      `figure workerd hyperdrive-local ${client} pool.${door}: deadline answer ${answeredAt - started} ms; backend gone ${goneMs} ms after it`,
    );
  });

  // workerPool asks for the pool's TTL (30 s in these tests): the same pieces it wires, asking for a
  // 900 ms lease, so a revoke is heard at the next renewal, 300 ms later.
  it("a lease revoked mid-statement (the Durable Object refuses the next renewal): LEASE_LOST, the statement cancelled", async () => {
    const app = `${APP}-${client}-lost-${++seq}`;
    const config = databaseConfig({
      ...env,
      APPLICATION_NAME: app,
      DB_STATEMENT_TIMEOUT: "off",
      DB_DEADLINE_MS: "10000",
    });
    const stub = env.COORDINATOR_DO.getByName(`hd-lost-${Date.now()}-${seq}`);
    const ctx = createExecutionContext();
    const bound = bindDriver(DRIVERS[client] as DriverModule<unknown>, config);
    const db = new Database({
      name: app,
      driver: bound,
      leases: new Leases(stub),
      config,
      leaseTtlMs: 900,
      waitUntil: (promise) => ctx.waitUntil(promise),
      log: () => {},
    });
    const p = { db, sql: leasedSql(db, bound) } as unknown as ReturnType<typeof pool>["pool"];
    const watch = await sampler(app);
    const running = sleep(p, client, door).catch((e: unknown) => e);
    await watch.until((s) => s.backends.length > 0);
    const [held] = (await stub.stats()).leases;
    await stub.revoke(held!.idPrefix);
    const revokedAt = Date.now();
    const error = await running;
    const answeredAt = Date.now();
    expect(isLeaseError(error) && { code: error.code, executed: error.executed }).toEqual({
      code: "LEASE_LOST",
      executed: "maybe",
    });
    expect(answeredAt - revokedAt).toBeLessThan(600);
    const goneMs = await watch.goneAfter(answeredAt);
    await watch.stop();
    expect(goneMs).toBeLessThanOrEqual(150);
    console.log(
      `figure workerd hyperdrive-local ${client} pool.${door}: lease lost ${answeredAt - revokedAt} ms after the revoke; backend gone ${goneMs} ms after it`,
    );
  });
});
