import pg from "pg";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { closePgClient } from "../../src/db/drivers/node-postgres.ts";
import { toDatabaseError } from "../../src/db/errors.ts";
import { isRetryable } from "../../src/db/retry.ts";
import { localPools } from "../local/helpers.ts";
import { captureLog, silentServer, TEST_URL } from "./helpers.ts";

// node-postgres against the real Postgres of `npm test`, under leases of a real PostgresCoordinator.
const APP = `pg-driver-${process.pid}`;
const admin = postgres(TEST_URL, { max: 2, onnotice: () => {} });
const pools = localPools("pg-driver", { limit: 2, maxQueue: 10, waitMs: 2000, leaseTtlMs: 30_000 });
afterAll(async () => {
  await pools.cleanup();
  await admin.end();
});

const backends = async (app = APP) =>
  Number((await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${app}`)[0]!.n);

function setup(env: Record<string, string> = {}) {
  const config = databaseConfig({
    DATABASE_URL: TEST_URL,
    DATABASE_CLIENT: "pg",
    APPLICATION_NAME: APP,
    DB_DEADLINE_MS: "5000",
    ...env,
  });
  const coordinator = pools.coordinator();
  const leases = new Leases(coordinator);
  const log = captureLog();
  const db = new Database({
    name: "pg",
    driver: openDriver(config),
    leases,
    config: { ...config, retry: { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 50 } },
    log: log.write,
  });
  return { config, coordinator, leases, db, log };
}

describe("DATABASE_CLIENT picks node-postgres", () => {
  it("selects the pg driver for a plain URL and for a Hyperdrive binding; postgres.js stays the default", () => {
    expect(databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "pg" })).toMatchObject({
      environment: "local",
      driver: "pg",
    });
    expect(
      databaseConfig({ HYPERDRIVE: { connectionString: "postgres://u:p@hd.local:5432/db" }, DATABASE_CLIENT: "pg" }),
    ).toMatchObject({
      environment: "edge",
      driver: "pg",
    });
    expect(databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "postgres" })).toMatchObject({
      driver: "postgres",
    });
    expect(databaseConfig({ HYPERDRIVE: { connectionString: "postgres://u:p@hd.local:5432/db" } })).toMatchObject({
      driver: "postgres",
    });
    expect(databaseConfig({ DATABASE_URL: TEST_URL })).toMatchObject({ driver: "postgres" });
  });

  it("rejects an unknown client and a client choice on the Neon driver with INVALID_CONFIG naming the variable", () => {
    const fails = (env: Record<string, string | { connectionString: string }>) => {
      try {
        databaseConfig(env as never);
      } catch (error) {
        return isLeaseError(error)
          ? { code: error.code, message: error.message }
          : { code: "?", message: String(error) };
      }
      return { code: "none", message: "" };
    };
    const bad = fails({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "node-postgres" });
    expect(bad.code).toBe("INVALID_CONFIG");
    expect(bad.message).toContain("DATABASE_CLIENT");
    expect(bad.message).toContain("one of `postgres`, `pg`, `neon`, `bun`");
    const neon = fails({
      DATABASE_URL: "postgres://u:p@ep-cool-1.us-east-2.aws.neon.tech/db?sslmode=require",
      DATABASE_CLIENT: "pg",
    });
    expect(neon.code).toBe("INVALID_CONFIG");
    expect(neon.message).toContain("DATABASE_CLIENT");
    expect(neon.message).not.toContain("u:p@");
    expect(fails({ DATABASE_URL: TEST_URL, DATABASE_DRIVER: "neon", DATABASE_CLIENT: "postgres" }).code).toBe(
      "INVALID_CONFIG",
    );
    // Reaching a Neon host over TCP with pg is a plain Postgres connection: allowed.
    expect(
      fails({
        DATABASE_URL: "postgres://u:p@ep-cool-1.us-east-2.aws.neon.tech/db",
        DATABASE_DRIVER: "postgres",
        DATABASE_CLIENT: "pg",
      }).code,
    ).toBe("none");
  });
});

describe("the pg driver", () => {
  it("runs a query with parameters under a lease and leaves no backend behind", async () => {
    const { db, leases } = setup();
    const rows = await db.query("SELECT $1::int + 1 AS n, $2::text AS s, current_setting('application_name') AS app", [
      41,
      "x",
    ]);
    expect(rows).toEqual([{ n: 42, s: "x", app: APP }]);
    expect((await leases.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("runs a transaction on one connection: BEGIN … COMMIT commits, a throw rolls back", async () => {
    const { db, leases } = setup();
    await admin`CREATE TABLE IF NOT EXISTS pg_driver_tx (pid int, note text)`;
    await admin`DELETE FROM pg_driver_tx`;
    const pids = await db.transaction(async (tx) => {
      const [a] = await tx.query("SELECT pg_backend_pid() AS pid");
      await tx.query("INSERT INTO pg_driver_tx VALUES (pg_backend_pid(), $1)", ["kept"]);
      const [b] = await tx.query("SELECT pg_backend_pid() AS pid, (SELECT count(*)::int FROM pg_driver_tx) AS seen");
      return { a: a!.pid, b: b!.pid, seen: b!.seen };
    });
    // Every statement ran on the same backend, inside the transaction (it saw its own insert).
    expect(pids.a).toBe(pids.b);
    expect(pids.seen).toBe(1);
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO pg_driver_tx VALUES (0, $1)", ["dropped"]);
        throw new Error("handler failed");
      }),
    ).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    expect((await admin`SELECT note FROM pg_driver_tx ORDER BY note`).map((r) => r.note)).toEqual(["kept"]);
    expect((await leases.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
    await admin`DROP TABLE pg_driver_tx`;
  });

  it("classifies a backend terminated mid-query (57P01) as a lost connection, and never reruns its statement", async () => {
    // The error itself, straight from pg.
    const client = new pg.Client({ connectionString: TEST_URL, application_name: `${APP}-kill` });
    client.on("error", () => {});
    await client.connect();
    const pid = (await client.query("SELECT pg_backend_pid() AS pid")).rows[0].pid as number;
    const running = client.query("SELECT pg_sleep(10)").catch((e: unknown) => e);
    await expect
      .poll(async () =>
        Number(
          (await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${pid} AND state = 'active'`)[0]!.n,
        ),
      )
      .toBe(1);
    await admin`SELECT pg_terminate_backend(${pid})`;
    const error = (await running) as { code?: string };
    expect(error.code).toBe("57P01");
    expect(isRetryable(error)).toBe(true);
    expect(toDatabaseError(error)).toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    // The client is dead now: the next query's error (no SQLSTATE) is a connection failure too.
    const after = await client.query("SELECT 1").catch((e: unknown) => e);
    expect(toDatabaseError(after).code).toBe("DATABASE_UNAVAILABLE");
    await closePgClient(client);

    // Through the Database layer: the attempt's backend is terminated mid-statement, which may have
    // run; it is answered at once, not rerun.
    const { db, leases, log } = setup();
    let attempts = 0;
    const killer = (async () => {
      await expect
        .poll(
          async () =>
            Number(
              (
                await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${APP} AND query LIKE '%pg_sleep%'`
              )[0]!.n,
            ),
          { timeout: 5000 },
        )
        .toBe(1);
      await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${APP} AND query LIKE '%pg_sleep%'`;
    })();
    const result = db.run(async (scope) => {
      attempts++;
      const conn = await openDriver(
        databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "pg", APPLICATION_NAME: APP }),
      ).connect();
      scope.beforeRelease(() => conn.close());
      if (attempts === 1) await conn.query("SELECT pg_sleep(10)");
      return conn.query("SELECT 'ok' AS answer");
    });
    result.catch(() => {}); // asserted below; it may reject before the killer's own answer arrives
    await killer;
    await expect(result).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE", executed: "maybe" });
    expect(attempts).toBe(1);
    expect(log.lines).toMatchObject([{ event: "database_error", code: "DATABASE_UNAVAILABLE", executed: "maybe" }]);
    expect((await leases.stats()).held).toBe(0);
    expect(await backends()).toBe(0);
  });

  it("closes only once the backend is gone from pg_stat_activity, and close never throws", async () => {
    const driver = openDriver(setup().config);
    const conns = await Promise.all([driver.connect(), driver.connect(), driver.connect()]);
    expect(await backends()).toBe(3);
    await Promise.all(conns.map((c) => c.close()));
    // Checked right after close resolved, with no polling: the server had counted them out already.
    expect(await backends()).toBe(0);
    // Closing twice, and closing a connection whose backend was terminated, both resolve.
    await expect(conns[0]!.close()).resolves.toBeUndefined();
    const conn = await driver.connect();
    await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${APP}`;
    await expect.poll(() => backends()).toBe(0);
    await expect(conn.close()).resolves.toBeUndefined();
  });

  it("answers DATABASE_UNAVAILABLE for a refused connection and for a server that never answers, and gives the slot back", async () => {
    const refused = setup({ DATABASE_URL: "postgres://postgres@127.0.0.1:1/postgres" });
    await expect(refused.db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    expect((await refused.leases.stats()).held).toBe(0);

    const silent = await silentServer(5497);
    try {
      const hung = setup({
        DATABASE_URL: "postgres://postgres@127.0.0.1:5497/postgres",
        DB_CONNECT_TIMEOUT_MS: "300",
        DB_DEADLINE_MS: "3000",
      });
      const started = Date.now();
      await expect(hung.db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
      expect(Date.now() - started).toBeLessThan(3000);
      expect(silent.accepted()).toBeGreaterThan(0);
      expect((await hung.leases.stats()).held).toBe(0);
    } finally {
      await silent.close();
    }
  });
});
