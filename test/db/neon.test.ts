import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { serializeError } from "../../src/db/safe-error.ts";
import { TEST_URL, captureLog, memoryCoordinator, wsBridge } from "./helpers.ts";

// The Neon serverless driver speaks Postgres over a WebSocket. Neon's proxy is not available here,
// so the test runs the same kind of WebSocket-to-TCP bridge in front of the real local Postgres.
const BRIDGE_PORT = 5482;
let bridge: Awaited<ReturnType<typeof wsBridge>>;
beforeAll(async () => {
  bridge = await wsBridge(BRIDGE_PORT);
});
afterAll(async () => {
  await bridge.close();
});

const neonOptions = (port: number) => ({
  wsProxy: (host: string, p: number | string) => `127.0.0.1:${port}/v2?address=${host}:${p}`,
  useSecureWebSocket: false,
});

function neonDatabase(port = BRIDGE_PORT) {
  const config = {
    ...databaseConfig({
      DATABASE_URL: TEST_URL,
      DATABASE_DRIVER: "neon",
      DB_CONNECT_TIMEOUT_MS: "2000",
      DB_DEADLINE_MS: "3000",
      SLOW_QUERY_MS: "0",
    }),
    retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 50 },
  };
  const log = captureLog();
  const coordinator = memoryCoordinator();
  const db = new Database({
    name: "neon",
    driver: openDriver(config, neonOptions(port)),
    leases: new Leases(coordinator),
    config,
    log: log.write,
  });
  return { db, log, coordinator, config };
}

describe("the Neon driver over a WebSocket bridge to the real Postgres", () => {
  it("is chosen for DATABASE_DRIVER=neon and runs queries with parameters under a lease", async () => {
    const { db, config, coordinator, log } = neonDatabase();
    expect(config).toMatchObject({ environment: "production", driver: "neon" });
    const before = bridge.connections();
    const rows = await db.query("SELECT count(*)::int AS n FROM pitches WHERE genre = $1", ["drama"]);
    expect(rows[0]!.n).toBeGreaterThan(0);
    expect(bridge.connections()).toBe(before + 1);
    expect((await coordinator.stats()).counters).toMatchObject({ granted: 1, released: 1 });
    // SLOW_QUERY_MS=0 logs every statement: the text, never the parameters.
    expect(log.lines.find((l) => l.event === "slow_query")).toMatchObject({
      query: "SELECT count(*)::int AS n FROM pitches WHERE genre = $1",
      ok: true,
    });
  });

  it("rolls a transaction back when fn throws and classifies a constraint error as DATABASE_ERROR", async () => {
    const { db } = neonDatabase();
    const title = `neon-${Date.now()}`;
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ($1, 'l', 'drama', 'a')", [title]);
        await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ('', 'l', 'drama', 'a')");
      }),
    ).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    expect(await db.query("SELECT 1 FROM pitches WHERE title = $1", [title])).toEqual([]);
  });

  it("answers DATABASE_UNAVAILABLE when the WebSocket endpoint is down, and its error serializes safely", async () => {
    const { db, log } = neonDatabase(5483); // nothing listens there
    await expect(db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    const line = log.lines.find((l) => l.event === "database_error");
    expect(line).toMatchObject({ code: "DATABASE_UNAVAILABLE" });
  });
});

describe("real driver objects in the safe serializer", () => {
  it("serializes the Neon driver's error with its live client: bounded, cycle-safe, password blanked", async () => {
    const { Client, neonConfig } = await import("@neondatabase/serverless");
    Object.assign(neonConfig, neonOptions(BRIDGE_PORT));
    const withPassword = new URL(TEST_URL);
    withPassword.password = "Neon-Secret-1"; // trust auth ignores it; it must not leak
    const client = new Client(withPassword.toString());
    client.on("error", () => {});
    await client.connect();
    try {
      const error = (await client.query("SELEC 1").catch((e: unknown) => e)) as object;
      // What node-postgres-style pools hand to an error listener, and what apps then log: the error with its client.
      const logged = new Error("query failed", { cause: Object.assign(error, { client }) });
      // The hazard is real: plain JSON of the client carries the password (connectionParameters).
      expect(JSON.stringify(client)).toContain("Neon-Secret-1");
      // Close the loop the way long-lived objects do: the connection keeps its last error.
      Object.assign((client as unknown as { connection: object }).connection, { lastError: error });
      expect(() => JSON.stringify(error)).toThrow(/circular/i);
      // With DB_LOG_DETAIL=on the error keeps its fields, client included; by default only codes and names.
      expect(JSON.stringify(serializeError(logged, { maxBytes: 4096 }))).not.toContain("connectionParameters");
      const out = JSON.stringify(serializeError(logged, { maxBytes: 4096, detail: true }));
      expect(out.length).toBeLessThanOrEqual(4096);
      expect(out).toContain("[Circular]");
      expect(out).toContain("42601");
      expect(out).not.toContain("Neon-Secret-1");
    } finally {
      await client.end();
    }
  });
});
