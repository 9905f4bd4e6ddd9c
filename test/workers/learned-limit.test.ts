/**
 * `LEASE_LIMIT=auto` seen from the Durable Object's side in workerd. The objects of this suite run
 * with a fixed `LEASE_LIMIT` (the config's bindings), so here they must refuse a learning and say
 * their limit is configured; the learned path itself runs in real workerd under `wrangler dev`
 * (test/local/learned-limit-workerd.test.ts), where the object's own env says `auto`.
 */
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker, { type Env } from "../../examples/pitches/src/worker.ts";
import type { RoomTerms } from "../../src/core/index.ts";

const terms: RoomTerms = {
  maxConnections: 100,
  superuserReserved: 3,
  reserved: null,
  roleLimit: 20,
  databaseLimit: null,
  othersOnServer: 11,
  othersOfRole: 1,
  othersInDatabase: 5,
  headroom: 2,
  limitMax: null,
};
let seq = 0;

function app(overrides: Partial<Env> = {}) {
  const pool = `learn-${++seq}-${Date.now().toString(36)}`;
  const e: Env = { ...env, LEASE_POOL: pool, ...overrides };
  const call = async (path: string, init: RequestInit = {}) => {
    const ctx = createExecutionContext();
    const request = new Request(`http://example.test${path}`, init) as Request<unknown, IncomingRequestCfProperties>;
    const response = await worker.fetch(request, e, ctx);
    await waitOnExecutionContext(ctx);
    return response;
  };
  return { pool, call, stub: () => env.COORDINATOR_DO.getByName(pool) };
}

describe("a coordinator object with a fixed LEASE_LIMIT", () => {
  it("is never due to learn, refuses learned terms with INVALID_ARGUMENT and says its limit is configured", async () => {
    const { stub } = app();
    expect(await stub().learnDue(1000)).toBe(false);
    const answer = await stub().learnedLimit(terms);
    expect(answer).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    const stats = await stub().operatorStats();
    expect(stats).toMatchObject({ limit: 3, limitSource: "configured", learned: null });
    await stub().setLimit(2);
    expect((await stub().operatorStats()).limitSource).toBe("operator");
  });

  it("a Worker set to auto in front of it: the learning reads the database and the object refuses; requests still run", async () => {
    const { call } = app({ LEASE_LIMIT: "auto" });
    expect((await call("/api/pitches/trending?limit=1")).status).toBe(200);
    const r = await call("/__coordinator/learn", { method: "POST", headers: { authorization: "Bearer test-token" } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
  });

  it("LEASE_LIMIT=auto with LEASE_SHARDS: requests run on the shards, and the learning goes to the pool's root", async () => {
    const { call, stub } = app({ LEASE_LIMIT: "auto", LEASE_SHARDS: "2" });
    expect((await call("/api/pitches/trending?limit=1")).status).toBe(200);
    // The root (the object named after the pool) is the one asked: here its own limit is fixed, so it refuses.
    const r = await call("/__coordinator/learn", { method: "POST", headers: { authorization: "Bearer test-token" } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
    expect((await stub().operatorStats()).limitSource).toBe("configured");
  });
});
