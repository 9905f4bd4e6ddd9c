import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { errorResponse } from "../../src/http/respond.ts";
import { TEST_URL, memoryCoordinator } from "./helpers.ts";

// The coordinator here is the in-process stand-in (helpers.ts): a Durable Object cannot be made
// unreachable from plain Node, so `down` makes its calls throw as an unreachable stub's do.
function setup(env: Record<string, string>) {
  const config = {
    ...databaseConfig({ DATABASE_URL: TEST_URL, ...env }),
    retry: { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 10 },
  };
  const coordinator = memoryCoordinator();
  const db = new Database({
    name: "safe",
    driver: openDriver(config),
    leases: new Leases(coordinator),
    config,
    log: () => {},
  });
  return { db, coordinator };
}

describe("safe mode when the coordinator is unreachable", () => {
  it("fails closed by default: 503 COORDINATOR_UNAVAILABLE with Retry-After, the database untouched, the circuit unaffected", async () => {
    const { db, coordinator } = setup({});
    coordinator.down = true;
    const error = await db.query("SELECT 1").catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "COORDINATOR_UNAVAILABLE" });
    const response = errorResponse(error);
    expect(response.status).toBe(503);
    expect(response.headers.get("retry-after")).toBe("1");
    expect(db.status()).toMatchObject({
      breaker: { state: "closed", failures: 0 },
      safeMode: { mode: "closed", refused: 2 },
    });
    coordinator.down = false;
    expect(await db.query("SELECT 1 AS one")).toEqual([{ one: 1 }]);
  });

  it("with LEASE_SAFE_MODE=budget runs at most LEASE_SAFE_BUDGET requests per isolate without a lease", async () => {
    const { db, coordinator } = setup({ LEASE_SAFE_MODE: "budget", LEASE_SAFE_BUDGET: "1" });
    coordinator.down = true;
    const [slow, refused] = await Promise.allSettled([
      db.query("SELECT pg_sleep(0.3), 'budget' AS via"),
      // Starts while the first holds the only budget slot.
      new Promise((r) => setTimeout(r, 50)).then(() => db.query("SELECT 1")),
    ]);
    expect(slow).toMatchObject({ status: "fulfilled", value: [{ via: "budget" }] });
    expect(refused).toMatchObject({ status: "rejected", reason: { code: "COORDINATOR_UNAVAILABLE" } });
    expect(db.safeMode.toJSON()).toMatchObject({ mode: "budget", budget: 1, inUse: 0, admitted: 1 });
    coordinator.down = false;
    await db.query("SELECT 1");
    expect((await coordinator.stats()).counters.granted).toBe(1);
  });
});
