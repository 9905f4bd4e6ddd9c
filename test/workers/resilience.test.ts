import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import worker, { type Env } from "../../examples/pitches/src/worker.ts";

// The Worker's own fetch with some bindings changed: a separate pool name keeps the module-level
// breaker of "main" out of it.
async function fetchWith(overrides: Partial<Env>, path: string): Promise<Response> {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(`http://example.test${path}`), { ...env, ...overrides } as Env, ctx);
  await waitOnExecutionContext(ctx);
  return response;
}

const get = (path: string, init?: RequestInit) =>
  exports.default.fetch(new Request(`http://example.test${path}`, init));
const auth = { authorization: "Bearer test-token" };

describe("database layer in workerd", () => {
  it("shows the circuit breaker and safe mode in /health and /__coordinator/stats", async () => {
    const health = (await (await get("/health")).json()) as Record<string, unknown>;
    expect(health).toMatchObject({
      status: "ok",
      breaker: { name: "main", state: "closed", failures: 0 },
      safeMode: { mode: "closed" },
    });
    const stats = (await (await get("/__coordinator/stats", { headers: auth })).json()) as Record<string, unknown>;
    expect(stats).toMatchObject({ pool: "main", breaker: { state: "closed" } });
  });

  it("runs query and transaction through Hyperdrive under leases of the real Durable Object", async () => {
    const config = databaseConfig(env);
    expect(config).toMatchObject({ environment: "edge", driver: "postgres" });
    const leases = new Leases(env.COORDINATOR_DO.getByName("resilience-tx"));
    const db = new Database({ name: "tx", driver: openDriver(config), leases, config, log: () => {} });
    const [row] = await db.query("SELECT count(*)::int AS n FROM pitches WHERE is_public = $1", [true]);
    expect(row!.n).toBeGreaterThan(0);
    const title = `workerd-tx-${Date.now()}`;
    await expect(
      db.transaction(async (tx) => {
        await tx.query("INSERT INTO pitches (title, logline, genre, author) VALUES ($1, 'l', 'drama', 'a')", [title]);
        throw new Error("roll it back");
      }),
    ).rejects.toMatchObject({ code: "DATABASE_ERROR" });
    expect(await db.query("SELECT 1 FROM pitches WHERE title = $1", [title])).toEqual([]);
    const s = await leases.stats();
    expect(s).toMatchObject({ held: 0, counters: { granted: 3, released: 3 } });
  });

  it("answers an unreachable database with 503 DATABASE_UNAVAILABLE, opens the circuit, and the Worker keeps serving", async () => {
    // Nothing listens on this port: cloudflare:sockets gets a refused connection.
    const config = {
      ...databaseConfig({ HYPERDRIVE: { connectionString: "postgres://postgres:Edge-Secret@127.0.0.1:5486/none" } }),
      breaker: { failureThreshold: 2, openMs: 60_000 },
      retry: { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 10 },
    };
    const lines: string[] = [];
    const db = new Database({
      name: "dead",
      driver: openDriver(config),
      leases: new Leases(env.COORDINATOR_DO.getByName("resilience-dead")),
      config,
      log: (l) => void lines.push(l),
    });
    await expect(db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    expect(db.breaker.state.state).toBe("open");
    const started = Date.now();
    await expect(db.query("SELECT 1")).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    expect(Date.now() - started).toBeLessThan(50);
    expect(lines.join("\n")).not.toContain("Edge-Secret");
    expect((await env.COORDINATOR_DO.getByName("resilience-dead").stats()).held).toBe(0);
    // The Worker is unharmed: the app still answers from the real database.
    expect((await get("/api/pitches/trending?limit=1")).status).toBe(200);
  });

  it("the Worker answers a dead database with 503s, then fails fast with the circuit open, and stays up", async () => {
    const dead = {
      LEASE_POOL: "dead-pool",
      HYPERDRIVE: { connectionString: "postgres://postgres:Edge-Secret@127.0.0.1:5486/none" } as Hyperdrive,
    };
    const codes: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await fetchWith(dead, "/api/pitches/trending");
      expect(r.status).toBe(503);
      const text = await r.text();
      expect(text).not.toContain("Edge-Secret");
      codes.push((JSON.parse(text) as { error: { code: string } }).error.code);
    }
    expect(new Set(codes)).toEqual(new Set(["DATABASE_UNAVAILABLE"]));
    const health = await fetchWith(dead, "/health");
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ database: "down", breaker: { name: "dead-pool", state: "open" } });
    expect((await get("/health")).status).toBe(200);
  });

  it("answers a malformed setting with 500 INVALID_CONFIG naming it, never the password", async () => {
    const r = await fetchWith({ LEASE_SAFE_MODE: "sometimes" }, "/api/pitches/trending");
    expect(r.status).toBe(500);
    const body = (await r.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("INVALID_CONFIG");
    expect(body.error.message).toContain("LEASE_SAFE_MODE");
    const bad = await fetchWith(
      { HYPERDRIVE: { connectionString: "postgres//app:Edge-Secret@db" } as Hyperdrive },
      "/health",
    );
    expect(bad.status).toBe(500);
    expect(await bad.text()).not.toContain("Edge-Secret");
  });
});
