import * as neon from "@neondatabase/serverless";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import type { SessionLimits } from "../../src/db/driver.ts";
import { Database, type Runtime, SYSTEM_RUNTIME } from "../../src/db/database.ts";
import { neonDriver } from "../../src/db/drivers/neon.ts";
import { forgetPools } from "../local/helpers.ts";
import { startSampler } from "../limit/sampler.ts";
import { TEST_URL, memoryCoordinator, wsBridge } from "./helpers.ts";

// A deadline or a lost lease must reach the database: the statement is cancelled, the connection
// closed, and only then the slot given back. What counts is what Postgres shows: backends in
// pg_stat_activity, sampled every 10 ms from a connection of their own. Every front door of a
// local pool (`pool.db`, `pool.sql` with the driver's own client) on each driver that runs here:
// postgres.js and node-postgres over TCP, Neon's driver over a WebSocket bridge (Neon's own proxy
// is not available here).

const admin = postgres(TEST_URL, { max: 2, onnotice: () => {} });
const BRIDGE_PORT = 5484;
let bridge: Awaited<ReturnType<typeof wsBridge>>;
const opened: LocalPool[] = [];
const POOL_PREFIX = `deadline-${process.pid}-${Date.now()}`;
let seq = 0;

beforeAll(async () => {
  bridge = await wsBridge(BRIDGE_PORT);
});
// Each pool holds its coordinator's connections: closed after each test, so the shared cluster's
// connection limit is never the test's problem.
afterEach(async () => {
  for (const pool of opened.splice(0)) await pool.close();
});
afterAll(async () => {
  await forgetPools(admin, `${POOL_PREFIX}-%`);
  await bridge.close();
  await admin.end();
});

/** Leased backends of `app` as Postgres counts them, sampled every 10 ms while the test runs. */
const sampler = (app: string) => startSampler((text, params) => admin.unsafe(text, params as never[]), { app });

type Client = "postgres" | "pg" | "neon";

async function pool(client: Client, env: Record<string, string> = {}) {
  const app = `dl-${client}-${process.pid}-${++seq}`;
  const base = {
    DATABASE_URL: TEST_URL,
    APPLICATION_NAME: app,
    LEASE_POOL: `${POOL_PREFIX}-${seq}`,
    LEASE_LIMIT: "1",
    LEASE_TTL_MS: "900",
    LEASE_WAIT_MS: "2000",
    DB_DEADLINE_MS: "1000",
    ...(client === "pg" && { DATABASE_CLIENT: "pg" }),
    ...(client === "neon" && { DATABASE_DRIVER: "neon" }),
    ...env,
  };
  const driver =
    client === "neon"
      ? neonDriver(neon, {
          wsProxy: (host, p) => `127.0.0.1:${BRIDGE_PORT}/v2?address=${host}:${p}`,
          useSecureWebSocket: false,
        })
      : undefined;
  const p = await localPool(base, driver ? { driver } : {});
  opened.push(p);
  return { pool: p, app };
}

/** A statement of `ms` through the pool's front door: `db` (the database layer) or `sql` (the driver's own client). */
function sleep(p: LocalPool, client: Client, door: "db" | "sql", seconds: number, deadlineMs?: number) {
  const options = deadlineMs === undefined ? {} : { deadlineMs };
  if (door === "db") return p.db.query(`SELECT pg_sleep(${seconds})`, [], options);
  return p.sql(async (c: unknown) => {
    if (client === "postgres") return (c as postgres.Sql).unsafe(`SELECT pg_sleep(${seconds})`);
    return (await (c as { query(t: string): Promise<{ rows: unknown[] }> }).query(`SELECT pg_sleep(${seconds})`)).rows;
  }, options);
}

async function heldLeases(p: LocalPool): Promise<number> {
  return (await p.operator!.stats()).held;
}

const CASES: Array<[Client, "db" | "sql"]> = [
  ["postgres", "db"],
  ["postgres", "sql"],
  ["pg", "db"],
  ["pg", "sql"],
  ["neon", "db"],
  ["neon", "sql"],
];

// `off`: no startup parameters, so no check interval either — closing the connection alone would
// leave the statement running its 5 s: only the cancel request stops it this soon.
describe.each(CASES)("%s, pool.%s", (client, door) => {
  it.each(["startup", "off"])(
    "a 5 s statement with a 1000 ms deadline (DB_STATEMENT_TIMEOUT=%s): DEADLINE_EXCEEDED at ~1 s, the backend gone within 100 ms, the slot free at once",
    async (mode) => {
      const { pool: p, app } = await pool(client, { DB_STATEMENT_TIMEOUT: mode });
      const watch = await sampler(app);
      const started = Date.now();
      const error = await sleep(p, client, door, 5).catch((e: unknown) => e);
      const answeredAt = Date.now();
      expect(isLeaseError(error) && { code: error.code, executed: error.executed }).toEqual({
        code: "DEADLINE_EXCEEDED",
        executed: "maybe",
      });
      const answerMs = answeredAt - started;
      expect(answerMs).toBeGreaterThanOrEqual(990);
      expect(answerMs).toBeLessThan(1150);
      const goneMs = await watch.goneAfter(answeredAt);
      await watch.stop();
      expect(watch.peak()).toBe(1);
      // Sampled every 10 ms (plus the sample's own query): gone within 100 ms of the answer.
      expect(goneMs).toBeLessThanOrEqual(100);
      // The slot is back as soon as the backend is gone: the next caller is granted at once.
      await expect.poll(() => heldLeases(p), { timeout: 200, interval: 10 }).toBe(0);
      const next = Date.now();
      await expect(sleep(p, client, door, 0)).resolves.toHaveLength(1);
      expect(Date.now() - next).toBeLessThan(300);
      console.log(
        `figure ${client} pool.${door} ${mode}: deadline answer ${answerMs} ms; backend gone ${goneMs} ms after it`,
      );
    },
    15_000,
  );

  it("a lost lease mid-statement (an operator revoke, refused at the next renewal): LEASE_LOST, the backend gone within 100 ms", async () => {
    const { pool: p, app } = await pool(client, { DB_DEADLINE_MS: "10000" });
    const watch = await sampler(app);
    const running = sleep(p, client, door, 5).catch((e: unknown) => e);
    await watch.until((s) => s.backends.length > 0);
    const [held] = (await p.operator!.stats()).leases;
    await p.operator!.revoke(held!.idPrefix);
    const revokedAt = Date.now();
    const error = await running;
    const answeredAt = Date.now();
    expect(isLeaseError(error) && { code: error.code, executed: error.executed }).toEqual({
      code: "LEASE_LOST",
      executed: "maybe",
    });
    // The holder hears of the revoke at its next renewal: a third of the 900 ms TTL.
    expect(answeredAt - revokedAt).toBeLessThan(600);
    const goneMs = await watch.goneAfter(answeredAt);
    await watch.stop();
    expect(goneMs).toBeLessThanOrEqual(100);
    // Never two leased statements at limit 1.
    expect(watch.peak()).toBe(1);
    console.log(
      `figure ${client} pool.${door}: lease lost ${answeredAt - revokedAt} ms after the revoke; backend gone ${goneMs} ms after the answer`,
    );
  }, 15_000);
});

describe("the deadline and the circuit breaker", () => {
  it("several deadlines in a row leave the breaker closed: a slow statement is not a database that is down", async () => {
    const { pool: p } = await pool("postgres");
    for (let i = 0; i < 6; i++) {
      await expect(p.db.query("SELECT pg_sleep(5)", [], { deadlineMs: 200 })).rejects.toMatchObject({
        code: "DEADLINE_EXCEEDED",
      });
    }
    expect(p.db.breaker.state).toEqual({ state: "closed", failures: 0 });
    await expect(p.db.query("SELECT 1 AS one")).resolves.toEqual([{ one: 1 }]);
  }, 15_000);

  it("a client whose own timer is late (a stalled event loop) is stopped by the connection's statement_timeout: DEADLINE_EXCEEDED, not DATABASE_ERROR", async () => {
    const app = `dl-late-${process.pid}`;
    const config = databaseConfig({ DATABASE_URL: TEST_URL, APPLICATION_NAME: app, DB_DEADLINE_MS: "600" });
    const late: Runtime = { ...SYSTEM_RUNTIME, setTimer: (fn, ms) => SYSTEM_RUNTIME.setTimer(fn, ms + 1500) };
    const coordinator = memoryCoordinator({ limit: 1, maxQueue: 10, waitMs: 2000, leaseTtlMs: 30_000 });
    const db = new Database({
      name: "late-timer",
      driver: openDriver(config),
      leases: new Leases(coordinator),
      config,
      runtime: late,
      log: () => {},
    });
    const started = Date.now();
    const error = await db.query("SELECT pg_sleep(5)").catch((e: unknown) => e);
    // The server's own timer, set from what was left of the 600 ms deadline at connect.
    expect(Date.now() - started).toBeGreaterThanOrEqual(590);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(error).toMatchObject({ code: "DEADLINE_EXCEEDED", executed: "maybe", cause: { code: "57014" } });
    expect(db.breaker.state).toEqual({ state: "closed", failures: 0 });
    await expect.poll(async () => (await coordinator.stats()).held, { timeout: 500 }).toBe(0);
  }, 10_000);
});

describe("the startup parameters a leased connection carries", () => {
  it.each(["postgres", "pg", "neon"] as const)(
    "%s: statement_timeout and idle_in_transaction_session_timeout from the deadline, client_connection_check_interval 100ms; none with DB_STATEMENT_TIMEOUT=off",
    async (client) => {
      const read = async (env: Record<string, string>) => {
        const { pool: p } = await pool(client, { DB_DEADLINE_MS: "5000", ...env });
        const [row] = await p.db.query<Record<string, string>>(
          "SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS it, current_setting('client_connection_check_interval') AS cc",
        );
        return row!;
      };
      const on = await read({});
      expect(on.st).toMatch(/^4\d{3}ms$|^5s$/);
      expect(on.it).toBe(on.st);
      expect(on.cc).toBe("100ms");
      expect(await read({ DB_STATEMENT_TIMEOUT: "off" })).toEqual({ st: "0", it: "0", cc: "0" });
    },
    10_000,
  );

  it("a transaction sets its own statement_timeout with its BEGIN, for poolers that drop startup parameters", async () => {
    // A stand-in for a transaction-mode pooler (Hyperdrive in production, PgBouncer): the same
    // driver, with the startup parameters dropped on the way.
    const config = databaseConfig({ DATABASE_URL: TEST_URL, DB_DEADLINE_MS: "3000" });
    const inner = openDriver(config);
    const db = new Database({
      name: "pooler",
      driver: { name: inner.name, connect: () => inner.connect(undefined) },
      leases: undefined,
      config,
      log: () => {},
    });
    const [outside] = await db.query<{ st: string }>("SELECT current_setting('statement_timeout') AS st");
    expect(outside!.st).toBe("0");
    const inside = await db.transaction(async (tx) => {
      const [row] = await tx.query<{ st: string; it: string }>(
        "SELECT current_setting('statement_timeout') AS st, current_setting('idle_in_transaction_session_timeout') AS it",
      );
      return row!;
    });
    expect(inside.st).toMatch(/^2\d{3}ms$|^3s$/);
    expect(inside.it).toBe(inside.st);
    // And it holds: a statement in the transaction past the deadline is stopped by the server.
    const late: Runtime = { ...SYSTEM_RUNTIME, setTimer: (fn, ms) => SYSTEM_RUNTIME.setTimer(fn, ms + 1500) };
    const slow = new Database({
      name: "pooler-late",
      driver: { name: inner.name, connect: () => inner.connect(undefined) },
      leases: undefined,
      config: { ...config, deadlineMs: 500 },
      runtime: late,
      log: () => {},
    });
    const started = Date.now();
    await expect(slow.transaction((tx) => tx.query("SELECT pg_sleep(3)"))).rejects.toMatchObject({
      code: "DEADLINE_EXCEEDED",
      executed: "no",
    });
    expect(Date.now() - started).toBeLessThan(1200);
  }, 10_000);

  it.each(["postgres", "pg"] as const)(
    "%s: a server that refuses client_connection_check_interval at connect answers INVALID_CONFIG naming DB_CONNECTION_CHECK_MS, not retried; with 0 none is sent",
    async (client) => {
      // Postgres 13 and servers on a platform without the check (Windows) refuse the parameter at
      // startup; none runs here, so the real server is made to refuse it by a value out of its
      // range (the same FATAL, SQLSTATE 22023, at the same moment).
      const config = databaseConfig({
        DATABASE_URL: TEST_URL,
        DATABASE_CLIENT: client,
        DB_CONNECTION_CHECK_MS: "60000",
      });
      const inner = openDriver(config);
      const refusing = {
        name: inner.name,
        connect: (limits?: SessionLimits) =>
          inner.connect(limits?.connectionCheckMs ? { ...limits, connectionCheckMs: 3_000_000_000 } : limits),
      };
      const db = new Database({ name: "refused", driver: refusing, leases: undefined, config, log: () => {} });
      const error = await db.query("SELECT 1").catch((e: unknown) => e);
      expect(error).toMatchObject({
        code: "INVALID_CONFIG",
        executed: "no",
        message: expect.stringContaining("DB_CONNECTION_CHECK_MS=0"),
        cause: { code: "22023" },
      });
      expect(db.breaker.state).toEqual({ state: "closed", failures: 0 });
      const off = new Database({
        name: "refused-off",
        driver: refusing,
        leases: undefined,
        config: { ...config, connectionCheckMs: 0 },
        log: () => {},
      });
      await expect(off.query("SELECT current_setting('client_connection_check_interval') AS cc")).resolves.toEqual([
        { cc: "0" },
      ]);
    },
    10_000,
  );

  it("refuses a DB_STATEMENT_TIMEOUT that is neither startup nor off", async () => {
    await expect(pool("postgres", { DB_STATEMENT_TIMEOUT: "set" })).rejects.toMatchObject({
      code: "INVALID_CONFIG",
      message: expect.stringContaining("DB_STATEMENT_TIMEOUT"),
    });
  });
});
