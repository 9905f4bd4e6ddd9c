import { env } from "cloudflare:workers";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";

// node-postgres in real workerd (nodejs_compat), through the Hyperdrive binding's connection string.
const APP = `pg-workerd-${Date.now()}`;

async function backends(app: string): Promise<number> {
  const admin = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString });
  admin.on("error", () => {});
  await admin.connect();
  try {
    const { rows } = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [
      app,
    ]);
    return rows[0].n as number;
  } finally {
    await admin.end();
  }
}

describe("node-postgres in workerd through Hyperdrive", () => {
  it("connects with new pg.Client({ connectionString }) and runs a query with parameters", async () => {
    const client = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString, application_name: APP });
    // In workerd pg-cloudflare's read loop rejects once the socket is closed, and that reaches
    // the client as an 'error' event after end(): without a listener, an unhandled rejection.
    client.on("error", () => {});
    await client.connect();
    const { rows } = await client.query("SELECT $1::int + 1 AS n, count(*)::int > 0 AS seeded FROM pitches", [41]);
    expect(rows).toEqual([{ n: 42, seeded: true }]);
    await client.end();
    expect(await backends(APP)).toBe(0);
  });

  it("is the driver for DATABASE_CLIENT=pg: query and transaction under leases of the real Durable Object, nothing left open", async () => {
    const config = databaseConfig({ ...env, DATABASE_CLIENT: "pg", APPLICATION_NAME: `${APP}-db` });
    expect(config).toMatchObject({ environment: "edge", driver: "pg" });
    const leases = new Leases(env.COORDINATOR_DO.getByName(`pg-driver-${Date.now()}`));
    const db = new Database({ name: "pg-edge", driver: openDriver(config), leases, config, log: () => {} });
    const [row] = await db.query("SELECT current_setting('application_name') AS app, $1::text AS s", ["x"]);
    expect(row).toEqual({ app: `${APP}-db`, s: "x" });
    const title = `workerd-pg-tx-${Date.now()}`;
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ($1, 'l', 'drama', 'a')", [title]);
        throw new Error("roll it back");
      }),
    ).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    expect(await db.query("SELECT 1 FROM pitches WHERE title = $1", [title])).toEqual([]);
    expect(await leases.stats()).toMatchObject({ held: 0, counters: { granted: 3, released: 3 } });
    expect(await backends(`${APP}-db`)).toBe(0);
  });

  it("answers a refused connection with DATABASE_UNAVAILABLE and gives the slot back", async () => {
    const config = {
      ...databaseConfig({
        HYPERDRIVE: { connectionString: "postgres://postgres:x@127.0.0.1:5486/none" },
        DATABASE_CLIENT: "pg",
      }),
      retry: { maxAttempts: 1, baseDelayMs: 5, maxDelayMs: 10 },
    };
    const leases = new Leases(env.COORDINATOR_DO.getByName(`pg-refused-${Date.now()}`));
    const db = new Database({ name: "pg-refused", driver: openDriver(config), leases, config, log: () => {} });
    await expect(db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    expect((await leases.stats()).held).toBe(0);
  });
});
