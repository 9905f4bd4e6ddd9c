/**
 * `LEASE_LIMIT=auto` seen from the Durable Object's side in workerd. The objects of this suite run
 * with a fixed `LEASE_LIMIT` (the config's bindings), so they must refuse a learning and say their
 * limit is configured. An object given an env of its own that says `auto` (set inside it before
 * its first learning) shows what a caller can and cannot decide; the whole learned path runs in
 * real workerd under `wrangler dev` (test/local/learned-limit-workerd.test.ts).
 */
import { createExecutionContext, runInDurableObject, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker, { type Env } from "../../examples/pitches/src/worker.ts";
import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import type { RoomCounts } from "../../src/core/index.ts";
import { poolApplicationName } from "../../src/db/config.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

const counts: RoomCounts = {
  maxConnections: 100,
  superuserReserved: 3,
  reserved: null,
  roleLimit: 20,
  databaseLimit: null,
  othersOnServer: 11,
  othersOfRole: 1,
  othersInDatabase: 5,
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
    expect(await stub().learnDue()).toBe(false);
    const answer = await stub().learnLimit({ ok: true, counts });
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

/** An object of its own whose env says `auto` with these caps (as its deploy would set them). */
async function autoObject(vars: Record<string, string>) {
  const stub = env.COORDINATOR_DO.getByName(`auto-${++seq}-${Date.now().toString(36)}`);
  await runInDurableObject(stub, (instance: ConnectionCoordinator) => {
    const own = instance as unknown as { env: Record<string, unknown> };
    own.env = { ...own.env, LEASE_LIMIT: "auto", ...vars };
  });
  return stub;
}

describe("a coordinator object with LEASE_LIMIT=auto", () => {
  it("works the limit out with its own LEASE_HEADROOM and LEASE_LIMIT_MAX: a caller's caps are ignored", async () => {
    const stub = await autoObject({ LEASE_HEADROOM: "3", LEASE_LIMIT_MAX: "12" });
    expect(await stub.learnDue()).toBe(true);
    // A second caller in the same interval: the first holds the claim.
    expect(await stub.learnDue()).toBe(false);
    // The caller tries to raise the cap and drop the headroom: the object's own env decides.
    const sneaky = { ...counts, headroom: 0, limitMax: 1000 } as RoomCounts;
    const r = await stub.learnLimit({ ok: true, counts: sneaky });
    expect(r).toMatchObject({ ok: true, limit: 12, limitSource: "learned", learnFailure: null });
    if (!r.ok) throw new Error(r.message);
    expect(r.learned!.terms).toMatchObject({ headroom: 3, limitMax: 12 });
    expect(r.learned!.room).toBe(19);
    expect(r.learnedAgeMs).toBeGreaterThanOrEqual(0);
    expect(r.learnedAgeMs).toBeLessThan(1000);
    expect(await stub.operatorStats()).toMatchObject({ limit: 12, limitSource: "learned" });
  });

  it("keeps a failed reading for operators (the limit stays), answers it as that failure, and shows the age", async () => {
    const stub = await autoObject({ LEASE_HEADROOM: "2" });
    await stub.learnLimit({ ok: true, counts });
    const failed = await stub.learnLimit({ ok: false, code: "DATABASE_UNAVAILABLE", message: "refused" });
    expect(failed).toMatchObject({ ok: false, code: "DATABASE_UNAVAILABLE", message: "refused" });
    await new Promise((r) => setTimeout(r, 30));
    const s = await stub.operatorStats();
    expect(s).toMatchObject({ limit: 17, limitSource: "learned", learnFailure: { code: "DATABASE_UNAVAILABLE" } });
    expect(s.learnFailure!.at).toBeGreaterThanOrEqual(s.learned!.learnedAt);
    expect(s.learnedAgeMs).toBeGreaterThanOrEqual(25);
    // The next learning that works clears the failure.
    expect(await stub.learnLimit({ ok: true, counts })).toMatchObject({ ok: true, learnFailure: null });
  });

  it.each([
    ["not an object", 5],
    ["no ok", { counts }],
    ["counts missing", { ok: true }],
    ["a count that is not a count", { ok: true, counts: { ...counts, othersOnServer: -1 } }],
    ["a failure without a code", { ok: false, message: "x" }],
    ["a failure with a code leasegate does not have", { ok: false, code: "x".repeat(5000), message: "x" }],
  ])("refuses a reading with %s (INVALID_ARGUMENT), state unchanged", async (_, reading) => {
    const stub = await autoObject({});
    const r = await stub.learnLimit(reading as never);
    expect(r).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    expect(await stub.operatorStats()).toMatchObject({ learned: null, learnFailure: null });
  });
});

describe("the default application_name on Workers", () => {
  it("without APPLICATION_NAME, each pool's connections carry a name of its own: its coordinator object's id", async () => {
    const e = { ...env, APPLICATION_NAME: undefined };
    const nameOf = async (pool: string) => {
      const ctx = createExecutionContext();
      const p = workerPool(e, ctx, { driver, pool });
      const [row] = await p.db.query<{ name: string }>("SELECT current_setting('application_name') AS name");
      await waitOnExecutionContext(ctx);
      return row!.name;
    };
    const a = await nameOf("appname-a");
    expect(await nameOf("appname-a")).toBe(a);
    expect(await nameOf("appname-b")).not.toBe(a);
    expect(a).toBe(poolApplicationName(env.COORDINATOR_DO.idFromName("appname-a").toString()));
  });
});

describe("a Worker with LEASE_LIMIT=auto behind a lease block", () => {
  it("learns: a request asks the object in waitUntil, reads the room through Hyperdrive and hands it in", async () => {
    const stub = await autoObject({ LEASE_HEADROOM: "2", LEASE_BLOCK: "4" });
    const name = await runInDurableObject(stub, (_instance, state) => state.id.name ?? "");
    const e: Env = { ...env, LEASE_POOL: name, LEASE_LIMIT: "auto", LEASE_BLOCK: "4" };
    const ctx = createExecutionContext();
    const r = await worker.fetch(
      new Request("http://example.test/api/pitches/trending?limit=1") as Request<unknown, IncomingRequestCfProperties>,
      e,
      ctx,
    );
    expect(r.status).toBe(200);
    await waitOnExecutionContext(ctx);
    const s = await stub.operatorStats();
    expect(s).toMatchObject({ limitSource: "learned", learnFailure: null });
    expect(s.learned!.terms.headroom).toBe(2);
    expect(s.limit).toBe(s.learned!.limit);
  });
});
