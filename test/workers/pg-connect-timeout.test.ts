import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, inject, it } from "vitest";
import { settingsFromEnv } from "../../src/db/config.ts";
import { connectFromWorker } from "../../src/db/hyperdrive.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// A server that accepts the TCP connection and never answers (test/workers/silent-server.ts, on
// the Node side): only the connect timeout can end a connect to it.
const silent = `postgres://app:Silent-Secret@127.0.0.1:${inject("silentPort")}/db`;
let seq = 0;

function envWith(vars: Record<string, string>) {
  return {
    ...env,
    HYPERDRIVE: { connectionString: silent } as Hyperdrive,
    LEASE_POOL: `connect-timeout-${Date.now()}-${++seq}`,
    ...vars,
  };
}

describe("DB_CONNECT_TIMEOUT_MS on the Workers path (workerd, cloudflare:sockets)", () => {
  it("ends a connect to a server that never answers in at most 2 s with DB_CONNECT_TIMEOUT_MS=1000", async () => {
    const { database } = settingsFromEnv(envWith({ DB_CONNECT_TIMEOUT_MS: "1000" }));
    expect(database).toMatchObject({ environment: "edge", connectTimeoutMs: 1000 });
    const sql = connectFromWorker(database.connectionString, database.applicationName, database.connectTimeoutMs);
    const started = Date.now();
    const error = await sql`SELECT 1`.catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    expect(error).toMatchObject({ code: "CONNECT_TIMEOUT" });
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThanOrEqual(2000);
    await sql.end({ timeout: 0 }).catch(() => {});
  });

  it("bounds every attempt of workerPool().sql and .db by it: its attempts answer DATABASE_UNAVAILABLE long before the deadline, the slot back", async () => {
    const pool = workerPool(
      envWith({ DB_CONNECT_TIMEOUT_MS: "1000", DB_DEADLINE_MS: "20000" }),
      createExecutionContext(),
      { driver },
    );
    for (const call of [() => pool.sql((sql) => sql`SELECT 1`), () => pool.db.query("SELECT 1")]) {
      const started = Date.now();
      const error = await call().catch((e: unknown) => e);
      const elapsed = Date.now() - started;
      expect(error).toMatchObject({ code: "DATABASE_UNAVAILABLE" });
      expect(String((error as Error).message)).not.toContain("Silent-Secret");
      // Up to three attempts (the default retry policy) of about 1 s each, plus short backoffs;
      // with the old hard-coded 10 s connect timeout the first attempt alone took 10 s.
      expect(elapsed).toBeGreaterThanOrEqual(900);
      expect(elapsed).toBeLessThan(6000);
    }
    await expect.poll(async () => (await pool.leases!.stats()).held, { timeout: 3000 }).toBe(0);
  });
});
