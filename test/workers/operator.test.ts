import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { describe, expect, it } from "vitest";
import type { Sql } from "postgres";
import { closeConnection, connectFromWorker } from "../../src/db/hyperdrive.ts";
import worker, { type Env } from "../../examples/pitches/src/worker.ts";
import { grantNow, restartCoordinator } from "../support/coordinator.ts";
import { leaseRef } from "../../src/core/index.ts";

// biome-ignore lint/suspicious/noExplicitAny: JSON answers of many shapes, read field by field in assertions.
type Answer = Record<string, any>;

// Every test drives a pool of its own through the real HTTP handler, the real Durable Object and
// Hyperdrive's local mode into the real Postgres; objects keep state across tests in a file.
let seq = 0;
const auth = { authorization: "Bearer test-token" };

function app(overrides: Partial<Env> = {}) {
  const pool = `ops-${++seq}-${Date.now().toString(36)}`;
  const e: Env = { ...env, LEASE_POOL: pool, ...overrides };
  const call = async (path: string, init: RequestInit = {}) => {
    const ctx = createExecutionContext();
    // The Worker's own fetch handler, given an env whose pool (and app name) is this test's.
    // Requests built in a test carry no `cf` object; the handler never reads it.
    const request = new Request(`http://example.test${path}`, init) as Request<unknown, IncomingRequestCfProperties>;
    const response = await worker.fetch(request, e, ctx);
    await waitOnExecutionContext(ctx);
    return response;
  };
  const post = async (path: string, body: unknown = {}) => {
    const r = await call(path, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { ...auth, "content-type": "application/json" },
    });
    return { status: r.status, body: (await r.json()) as Answer };
  };
  const stats = async () => (await (await call("/__coordinator/stats", { headers: auth })).json()) as Answer;
  const stub = () => env.COORDINATOR_DO.getByName(pool);
  return { pool, env: e, call, post, stats, stub };
}

describe("operator endpoints: auth and formats", () => {
  it("refuses every control without the token and serves the dashboard page", async () => {
    const a = app();
    for (const [method, path] of [
      ["GET", "/__coordinator/metrics"],
      ["POST", "/__coordinator/pause"],
      ["POST", "/__coordinator/resume"],
      ["POST", "/__coordinator/limit"],
      ["POST", "/__coordinator/release"],
      ["POST", "/__coordinator/reconcile"],
    ] as const) {
      const r = await a.call(path, { method, headers: { authorization: "Bearer wrong" } });
      expect(r.status, path).toBe(401);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe("UNAUTHORIZED");
    }
    // Controls change state, so they answer POST only.
    for (const path of ["/__coordinator/pause", "/__coordinator/limit", "/__coordinator/reconcile"]) {
      expect((await a.call(path, { headers: auth })).status, path).toBe(405);
    }
    expect((await a.stats()).paused).toBe(false);
    const page = await a.call("/__coordinator/");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    const html = await page.text();
    expect(html).toContain('id="chart"');
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!example)/);
    // With no token configured, the whole operator surface does not exist.
    const off = app({ DEBUG_TOKEN: undefined });
    expect((await off.call("/__coordinator/")).status).toBe(404);
    expect((await off.call("/__coordinator/metrics", { headers: auth })).status).toBe(404);
  });

  it("serves Prometheus metrics that a text-format parser reads, after real queries", async () => {
    const a = app();
    expect((await a.call("/api/pitches/trending?limit=2")).status).toBe(200);
    const r = await a.call("/__coordinator/metrics", { headers: auth });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const families = new Map(parsePrometheusTextFormat(await r.text()).map((f) => [f.name, f]));
    const granted = families.get("leasegate_leases_granted_total")!.metrics[0]!;
    expect(granted.labels).toEqual({ pool: a.pool });
    expect(Number(granted.value)).toBe(1);
    expect(families.get("leasegate_wait_seconds")?.type).toBe("HISTOGRAM");
    expect(families.get("leasegate_limit_leases")?.metrics[0]?.value).toBe("3");
  });
});

describe("live controls on real Postgres", () => {
  it("pause drains: holders keep their slot, new requests wait and time out, resume grants the queue", async () => {
    const a = app();
    const probe = await a.stub().acquire({ holder: "migration-probe", ttlMs: 2000 });
    if (!probe.ok) throw new Error(probe.code);
    const held = probe.lease;
    expect((await a.post("/__coordinator/pause")).body).toMatchObject({ ok: true, paused: true, limit: 3 });
    // Two slots are free, yet a paused pool grants nobody: the request times out (LEASE_WAIT_MS 400).
    const refused = await a.call("/api/pitches/trending?limit=1");
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("ACQUIRE_TIMEOUT");
    expect(refused.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(await a.stats()).toMatchObject({ paused: true, held: 1 });
    // A paused pool survives a restart of its object.
    await restartCoordinator(a.pool);
    // The restarted object recovers its leases (the holder's release is still accepted) before granting.
    expect(await a.stats()).toMatchObject({ paused: true, held: 0, recovery: { recovered: 0 } });
    expect((await a.stub().release({ leaseId: held.id, fence: held.fence })).ok).toBe(true);
    await expect.poll(async () => (await a.stats()).recovery, { timeout: 5000 }).toBeNull();
    // A request queued while paused is granted the moment the pool resumes, and reaches Postgres.
    const queued = a.call("/api/pitches/trending?limit=1");
    await expect.poll(async () => (await a.stats()).waiting).toBe(1);
    expect((await a.post("/__coordinator/resume")).body).toMatchObject({ ok: true, paused: false });
    const served = await queued;
    expect(served.status).toBe(200);
    expect(((await served.json()) as { pitches: unknown[] }).pitches).toHaveLength(1);
    await expect.poll(async () => (await a.stats()).held).toBe(0);
  });

  it("changes the limit live, keeps it across a restart, and returns to LEASE_LIMIT on null", async () => {
    const a = app();
    const stub = a.stub();
    await Promise.all([grantNow(stub, "a"), grantNow(stub, "b"), grantNow(stub, "c")]);
    const queued = a.call("/api/pitches/public?limit=2");
    await expect.poll(async () => (await a.stats()).waiting).toBe(1);
    expect((await a.post("/__coordinator/limit", { limit: 4 })).body).toMatchObject({
      ok: true,
      limit: 4,
      limitOverride: 4,
    });
    // Raising the limit hands the new slot to the waiter at once: its query runs on Postgres.
    const served = await queued;
    expect(served.status).toBe(200);
    await restartCoordinator(a.pool);
    expect(await a.stats()).toMatchObject({ limit: 4, limitOverride: 4, held: 0, recovery: { recovered: 0 } });
    for (const bad of [0, -1, 1.5, "5", 10_001]) {
      const r = await a.post("/__coordinator/limit", { limit: bad });
      expect(r.status, String(bad)).toBe(400);
      expect(r.body.error.code).toBe("INVALID_ARGUMENT");
    }
    expect((await a.post("/__coordinator/limit", { limit: null })).body).toMatchObject({
      limit: 3,
      limitOverride: null,
    });
    await restartCoordinator(a.pool);
    expect(await a.stats()).toMatchObject({ limit: 3, limitOverride: null });
  });

  it("revokes a stuck lease by its id prefix: held until its holder stops and releases; its renewal is LEASE_LOST", async () => {
    const a = app();
    const stuck = await grantNow(a.stub(), "GET /api/stuck");
    const other = await grantNow(a.stub(), "GET /api/fine");
    const shown = ((await a.stats()).leases as Array<{ idPrefix: string; holder: string }>).find(
      (l) => l.holder === "GET /api/stuck",
    )!;
    expect(shown.idPrefix).toBe(stuck.id.slice(0, 8));
    expect((await a.post("/__coordinator/release", { id: "zzzzzzzz" })).body.error.code).toBe("LEASE_NOT_FOUND");
    expect((await a.post("/__coordinator/release", { id: "abc" })).status).toBe(400);
    const r = await a.post("/__coordinator/release", { id: shown.idPrefix });
    expect(r.body).toMatchObject({ ok: true, revoked: true, idPrefix: shown.idPrefix, holder: "GET /api/stuck" });
    // Its statement may still run: the slot stays taken, and stats say it is revoked.
    expect(await a.stats()).toMatchObject({ held: 2 });
    expect(
      ((await a.stats()).leases as Array<{ idPrefix: string; revoked?: true }>).find(
        (l) => l.idPrefix === shown.idPrefix,
      ),
    ).toMatchObject({ revoked: true });
    expect(await a.stub().renew(leaseRef(stuck))).toMatchObject({ ok: false, code: "LEASE_LOST" });
    expect(await a.stub().release(leaseRef(stuck))).toEqual({ ok: true, released: true });
    expect(await a.stats()).toMatchObject({ held: 1 });
    expect((await a.stub().release({ leaseId: other.id, fence: other.fence })).ok).toBe(true);
  });
});

describe("reconciliation with pg_stat_activity", () => {
  it("matches held leases to real connections, reports drift from connections outside the coordinator, and flags a role over the limit", async () => {
    // An application name of its own, so other tests' connections never count as this app's.
    const appName = `ops-recon-${Date.now().toString(36)}`;
    const a = app({ APPLICATION_NAME: appName });
    // Inside a real lease with its connection open (what the app's withDatabase does), the
    // database sees exactly one connection of the app.
    const lease = await grantNow(a.stub(), "reconcile-probe");
    const leased = connectFromWorker(env.HYPERDRIVE.connectionString, appName);
    let inside: Answer;
    try {
      await leased`SELECT 1`;
      inside = (await a.post("/__coordinator/reconcile")).body;
    } finally {
      await closeConnection(leased);
    }
    expect((await a.stub().release({ leaseId: lease.id, fence: lease.fence })).ok).toBe(true);
    expect(inside).toMatchObject({ held: 1, appConnections: 1, drift: 0, applicationName: appName, role: "postgres" });
    expect(inside.roleConnections).toBeGreaterThanOrEqual(1);

    // Two connections that bypass the coordinator: drift +2, and with a limit of 1 the role is over it.
    const rogue: Sql[] = [
      connectFromWorker(env.HYPERDRIVE.connectionString, appName),
      connectFromWorker(env.HYPERDRIVE.connectionString, appName),
    ];
    try {
      await Promise.all(rogue.map((sql) => sql`SELECT 1`));
      await a.post("/__coordinator/limit", { limit: 1 });
      const r = (await a.post("/__coordinator/reconcile")).body;
      expect(r).toMatchObject({
        held: 0,
        limit: 1,
        appConnections: 2,
        drift: 2,
        overLimit: true,
        status: "over_limit",
      });
      expect(r.roleConnections).toBeGreaterThanOrEqual(2);
      // The result stays visible in stats and metrics until the next run.
      expect((await a.stats()).reconciliation).toMatchObject({ drift: 2, status: "over_limit" });
      const metrics = await (await a.call("/__coordinator/metrics", { headers: auth })).text();
      const families = new Map(parsePrometheusTextFormat(metrics).map((f) => [f.name, f]));
      expect(families.get("leasegate_db_over_limit")?.metrics[0]?.value).toBe("1");
      expect(families.get("leasegate_reconcile_drift_connections")?.metrics[0]?.value).toBe("2");
    } finally {
      await Promise.all(rogue.map(closeConnection));
    }
    await expect
      .poll(async () => (await a.post("/__coordinator/reconcile")).body.appConnections, { timeout: 5000 })
      .toBe(0);
  });

  it("with LEASE_ENFORCE=terminate, terminates a tagged backend whose lease is not held past the grace period, never a held or a fresh one", async () => {
    const appName = `ops-enf-${Date.now().toString(36)}`;
    const a = app({ APPLICATION_NAME: appName, LEASE_ENFORCE: "terminate", LEASE_ENFORCE_GRACE_MS: "1500" });
    const lease = await grantNow(a.stub(), "enforce-probe");
    const tagged = (tag: string) => connectFromWorker(env.HYPERDRIVE.connectionString, `${appName}/${tag}`);
    const held = tagged(lease.id.slice(0, 8));
    const stale = tagged("deadbeef");
    const probe = connectFromWorker(env.HYPERDRIVE.connectionString, "ops-enf-probe");
    const open: Sql[] = [held, stale, probe];
    const names = async () =>
      (
        await probe`SELECT application_name AS app FROM pg_stat_activity
                    WHERE application_name LIKE ${`${appName}/%`} ORDER BY 1`
      ).map((r) => r.app as string);
    try {
      await Promise.all([held`SELECT 1`, stale`SELECT 1`]);
      // Past the grace period for the two opened first; the fresh one stays well inside it, even
      // on a loaded machine.
      await new Promise((r) => setTimeout(r, 1700));
      const fresh = tagged("cafebabe");
      open.push(fresh);
      await fresh`SELECT 1`;
      const r = (await a.post("/__coordinator/reconcile")).body;
      expect(r).toMatchObject({ held: 1, appConnections: 3, terminated: 1 });
      expect(await names()).toEqual([`${appName}/${lease.id.slice(0, 8)}`, `${appName}/cafebabe`].sort());
      const metrics = await (await a.call("/__coordinator/metrics", { headers: auth })).text();
      const families = new Map(parsePrometheusTextFormat(metrics).map((f) => [f.name, f]));
      expect(families.get("leasegate_reconcile_terminated_backends")?.metrics[0]?.value).toBe("1");
    } finally {
      await Promise.all(open.map(closeConnection));
      await a.stub().release({ leaseId: lease.id, fence: lease.fence });
    }
  });

  it("runs periodically from the cron trigger", async () => {
    const before = Date.now();
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ scheduledTime: new Date(), cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    const s = (await (
      await exports.default.fetch(new Request("http://example.test/__coordinator/stats", { headers: auth }))
    ).json()) as {
      reconciliation: { checkedAt: number; applicationName: string } | null;
    };
    expect(s.reconciliation?.checkedAt).toBeGreaterThanOrEqual(before);
    expect(s.reconciliation?.applicationName).toBe(env.APPLICATION_NAME);
  });
});
