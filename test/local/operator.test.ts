import parsePrometheusTextFormat from "parse-prometheus-text-format";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { type LocalApp, createLocalApp } from "../../examples/pitches/src/server.ts";
import { Leases } from "../../src/client/leases.ts";
import { codeOf } from "../support/codes.ts";
import { localPools, url } from "./helpers.ts";

// The operator surface of the local server on the real Postgres: the same endpoints and answers
// as the Worker's, driven through the app's fetch handler (no port needed).
const pools = localPools("operator", { limit: 3, maxQueue: 10, waitMs: 300, leaseTtlMs: 10_000 });
const POOL = pools.name();
const APP = `lg-op-${process.pid}`;
const TOKEN = "op-token";
const auth = { authorization: `Bearer ${TOKEN}` };
const apps: LocalApp[] = [];

async function app(): Promise<LocalApp> {
  const a = await createLocalApp({
    DATABASE_URL: url,
    LEASE_POOL: POOL,
    LEASE_LIMIT: "3",
    LEASE_WAIT_MS: "300",
    DEBUG_TOKEN: TOKEN,
    APPLICATION_NAME: APP,
  });
  apps.push(a);
  return a;
}

/** Another process's view of the same pool: a coordinator of its own on its own client. */
function holderOfPool(): Leases {
  return new Leases(pools.coordinator({}, POOL));
}

async function call(
  a: LocalApp,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const init: RequestInit =
    body === undefined
      ? { method: "POST", headers: auth }
      : { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify(body) };
  const r = await a.fetch(new Request(`http://local${path}`, init));
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

async function get(a: LocalApp, path: string): Promise<Response> {
  return await a.fetch(new Request(`http://local${path}`, { headers: auth }));
}

afterAll(async () => {
  for (const a of apps) await a.close();
  await pools.cleanup();
});

describe("local server operator surface", () => {
  it("serves the dashboard and Prometheus metrics, and refuses controls without the token", async () => {
    const a = await app();
    expect((await a.fetch(new Request("http://local/api/pitches/trending?limit=1"))).status).toBe(200);
    const page = await a.fetch(new Request("http://local/__coordinator/"));
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    const metrics = await get(a, "/__coordinator/metrics");
    expect(metrics.status).toBe(200);
    const families = new Map(parsePrometheusTextFormat(await metrics.text()).map((f) => [f.name, f]));
    expect(families.get("leasegate_limit_leases")?.metrics[0]?.value).toBe("3");
    expect(Number(families.get("leasegate_leases_granted_total")?.metrics[0]?.value)).toBeGreaterThanOrEqual(1);
    expect(families.get("leasegate_wait_seconds")?.type).toBe("HISTOGRAM");
    const denied = await a.fetch(new Request("http://local/__coordinator/pause", { method: "POST" }));
    expect(denied.status).toBe(401);
  });

  it("pauses and resumes granting for every process of the pool, and changes the limit live", async () => {
    const a = await app();
    const other = holderOfPool();
    expect(await call(a, "/__coordinator/pause")).toMatchObject({ status: 200, json: { pool: POOL, paused: true } });
    // Paused: the other process's callers wait out their deadline; the app answers 503.
    expect(await codeOf(other.acquire({ holder: "other", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    const paused = await a.fetch(new Request("http://local/api/pitches/trending?limit=1"));
    expect(paused.status).toBe(503);
    expect(paused.headers.get("retry-after")).not.toBeNull();
    const waiting = other.acquire({ holder: "other-waits", waitMs: 2000 });
    expect(await call(a, "/__coordinator/resume")).toMatchObject({ status: 200, json: { paused: false } });
    const lease = await waiting;
    expect((await a.fetch(new Request("http://local/api/pitches/trending?limit=1"))).status).toBe(200);

    expect(await call(a, "/__coordinator/limit", { limit: 1 })).toMatchObject({
      status: 200,
      json: { limit: 1, limitOverride: 1 },
    });
    // The other process holds the one slot: the app sheds at once after its 300 ms wait.
    expect((await a.fetch(new Request("http://local/api/pitches/trending?limit=1"))).status).toBe(503);
    const stats = (await (await get(a, "/__coordinator/stats")).json()) as Record<string, unknown>;
    expect(stats).toMatchObject({ limit: 1, limitOverride: 1, held: 1, paused: false });
    expect(await call(a, "/__coordinator/limit", { limit: "two" })).toMatchObject({
      status: 400,
      json: { error: { code: "INVALID_ARGUMENT" } },
    });
    expect(await call(a, "/__coordinator/limit", { limit: null })).toMatchObject({
      status: 200,
      json: { limit: 3, limitOverride: null },
    });
    await other.release(lease);
  });

  it("revokes a stuck lease of another process by its 8-character prefix: held until released, renewal LEASE_LOST", async () => {
    const a = await app();
    const other = holderOfPool();
    const stuck = await other.acquire({ holder: "stuck-holder" });
    expect(await call(a, "/__coordinator/release", { id: stuck.id.slice(0, 7) })).toMatchObject({
      status: 400,
      json: { error: { code: "INVALID_ARGUMENT" } },
    });
    expect(await call(a, "/__coordinator/release", { id: stuck.id.slice(0, 8) })).toMatchObject({
      status: 200,
      json: { revoked: true, idPrefix: stuck.id.slice(0, 8), holder: "stuck-holder" },
    });
    // Still held (its statement may still run); revoking again changes nothing.
    expect(await call(a, "/__coordinator/release", { id: stuck.id })).toMatchObject({
      status: 200,
      json: { revoked: true },
    });
    expect(await codeOf(other.renew(stuck))).toBe("LEASE_LOST");
    await other.release(stuck);
    expect(await call(a, "/__coordinator/release", { id: stuck.id })).toMatchObject({
      status: 404,
      json: { error: { code: "LEASE_NOT_FOUND" } },
    });
  });

  it("reconciles held leases with the app's connections in pg_stat_activity", async () => {
    const a = await app();
    const other = holderOfPool();
    const lease = await other.acquire({ holder: "reconcile" });
    // Two connections under the app's name, one of them without a lease: drift +1.
    const conns = postgres(url, { max: 2, onnotice: () => {}, connection: { application_name: APP } });
    pools.clients.push(conns);
    await Promise.all([conns.reserve(), conns.reserve()]).then((rs) => {
      for (const r of rs) r.release();
    });
    const r = await call(a, "/__coordinator/reconcile");
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ pool: POOL, applicationName: APP, appConnections: 2, held: 1, drift: 1, limit: 3 });
    expect(["drift", "over_limit"]).toContain(r.json.status);
    await conns.end();
    const stats = (await (await get(a, "/__coordinator/stats")).json()) as { reconciliation: { drift: number } };
    expect(stats.reconciliation.drift).toBe(1);
    await other.release(lease);
  });
});
