import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { captureLog, memoryCoordinator, silentServer } from "./helpers.ts";

// A server that accepts TCP connections and never says a word: a hung database or a black-holed
// network path. Only timeouts can end these calls.
const PORT = 5481;
let server: Awaited<ReturnType<typeof silentServer>>;
beforeAll(async () => {
  server = await silentServer(PORT);
});
afterAll(async () => {
  await server.close();
});

describe("a database that accepts and never answers", () => {
  it("times out the connect (CONNECT_TIMEOUT), retries within the deadline, answers DEADLINE_EXCEEDED (executed: no) mid-connect, and the slot comes back", async () => {
    const config = {
      ...databaseConfig({
        DATABASE_URL: `postgres://app:Hung-Secret@127.0.0.1:${PORT}/db`,
        DB_CONNECT_TIMEOUT_MS: "1000",
        DB_DEADLINE_MS: "2500",
      }),
      retry: { maxAttempts: 5, baseDelayMs: 50, maxDelayMs: 200 },
    };
    const log = captureLog();
    const coordinator = memoryCoordinator();
    const db = new Database({
      name: "hung",
      driver: openDriver(config),
      leases: new Leases(coordinator),
      config,
      log: log.write,
    });
    const started = Date.now();
    const error = await db.query("SELECT 1").catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    // The deadline passes during the third connect: nothing was sent, so nothing ran.
    expect(error).toMatchObject({ code: "DEADLINE_EXCEEDED", retryable: true, executed: "no" });
    // postgres.js's connect_timeout is whole seconds: 1 s per attempt; the 2.5 s deadline ends the
    // third attempt early, long before a fifth could run, and the caller has its answer then.
    expect(server.accepted()).toBeGreaterThanOrEqual(2);
    expect(server.accepted()).toBeLessThanOrEqual(3);
    expect(elapsed).toBeGreaterThanOrEqual(2400);
    expect(elapsed).toBeLessThan(2900);
    expect(log.lines.find((l) => l.event === "database_error")).toMatchObject({
      code: "DEADLINE_EXCEEDED",
      executed: "no",
    });
    expect(log.raw.join("")).not.toContain("Hung-Secret");
    // The abandoned attempt closes and gives its slot back once its connect times out.
    await expect.poll(async () => (await coordinator.stats()).held, { timeout: 2000 }).toBe(0);
  }, 15_000);

  it("answers at the deadline while an attempt is still connecting", async () => {
    const config = databaseConfig({
      DATABASE_URL: `postgres://127.0.0.1:${PORT}/db`,
      DB_CONNECT_TIMEOUT_MS: "5000",
      DB_DEADLINE_MS: "300",
    });
    const db = new Database({
      name: "hung-deadline",
      driver: openDriver(config),
      leases: undefined,
      config,
      log: () => {},
    });
    const started = Date.now();
    const error = await db.query("SELECT 1").catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "DEADLINE_EXCEEDED", executed: "no" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(Date.now() - started).toBeLessThan(800);
    // A database that does not answer a connect by the deadline counts against it (a slow
    // statement would not).
    expect(db.breaker.state).toEqual({ state: "closed", failures: 1 });
  });

  it("never retries past a short request deadline", async () => {
    const config = {
      ...databaseConfig({
        DATABASE_URL: `postgres://127.0.0.1:${PORT}/db`,
        DB_CONNECT_TIMEOUT_MS: "1000",
        DB_DEADLINE_MS: "1200",
      }),
      retry: { maxAttempts: 5, baseDelayMs: 500, maxDelayMs: 500 },
    };
    const before = server.accepted();
    // Deterministic backoff: the injected random draws the largest wait, which ends past the deadline.
    const rt = {
      now: Date.now,
      random: () => 0.99,
      sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
      setTimer: (fn: () => void, ms: number) => {
        const t = setTimeout(fn, ms);
        return () => clearTimeout(t);
      },
    };
    const db = new Database({
      name: "hung-short",
      driver: openDriver(config),
      leases: undefined,
      config,
      log: () => {},
      runtime: rt,
    });
    await expect(db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    expect(server.accepted() - before).toBe(1);
  }, 10_000);
});
