import { env, exports } from "cloudflare:workers";
import { afterAll, describe, expect, it } from "vitest";
import { closeConnection, connectFromWorker } from "../../src/db/hyperdrive.ts";

const get = (path: string, init?: RequestInit) =>
  exports.default.fetch(new Request(`http://example.test${path}`, init));
const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  get(path, { method: "POST", body, headers: { "content-type": "application/json", ...headers } });
const auth = { authorization: "Bearer test-token" };
const main = () => env.COORDINATOR_DO.getByName("main");

async function errorCode(response: Response): Promise<string> {
  const body = (await response.json()) as { error?: { code?: string } };
  return body.error?.code ?? "no error code";
}

// An observer connection, outside any lease, to see what the database itself sees.
const observer = connectFromWorker(env.HYPERDRIVE.connectionString, "leasegate-observer");
afterAll(async () => {
  await closeConnection(observer);
});

describe("example app in workerd against the real Postgres", () => {
  it("serves trending pitches through a lease and gives the slot back", async () => {
    const response = await get("/api/pitches/trending?limit=3");
    expect(response.status).toBe(200);
    // The Worker's own time, for load tests to tell from time spent in front of it.
    expect(response.headers.get("server-timing")).toMatch(/^app;dur=\d+, lease;dur=\d+, db;dur=\d+$/);
    const body = (await response.json()) as { pitches: Array<{ view_count: number; is_public: boolean }> };
    expect(body.pitches).toHaveLength(3);
    expect(body.pitches.every((p) => p.is_public)).toBe(true);
    const counts = body.pitches.map((p) => p.view_count);
    expect([...counts].sort((a, b) => b - a)).toEqual(counts);
    await expect.poll(async () => (await main().stats()).held).toBe(0);
    expect((await main().stats()).counters.granted).toBeGreaterThan(0);
  });

  it("pages public pitches and validates the query", async () => {
    const page = (await (await get("/api/pitches/public?limit=5&offset=5")).json()) as { pitches: unknown[] };
    expect(page.pitches).toHaveLength(5);
    for (const bad of ["limit=0", "limit=101", "limit=abc", "offset=-1"]) {
      const r = await get(`/api/pitches/public?${bad}`);
      expect(r.status, bad).toBe(400);
      expect(await errorCode(r)).toBe("INVALID_ARGUMENT");
    }
  });

  it("creates a pitch from a validated body and reads it back by id", async () => {
    const created = await post(
      "/api/pitches",
      JSON.stringify({
        title: "Pool Party",
        logline: "Eighteen slots, two hundred guests.",
        genre: "comedy",
        author: "ada",
      }),
    );
    expect(created.status).toBe(201);
    const { pitch } = (await created.json()) as { pitch: { id: string; title: string } };
    expect(pitch.title).toBe("Pool Party");
    const read = await get(`/api/pitches/${pitch.id}`);
    expect(read.status).toBe(200);
    expect(((await read.json()) as { pitch: { view_count: number } }).pitch.view_count).toBe(1);
  });

  it.each([
    { name: "not json", body: "{", code: "INVALID_ARGUMENT", status: 400 },
    { name: "an array", body: "[]", code: "INVALID_ARGUMENT", status: 400 },
    {
      name: "a missing title",
      body: JSON.stringify({ logline: "x", genre: "drama", author: "a" }),
      code: "INVALID_ARGUMENT",
      status: 400,
    },
    {
      name: "a wrong genre",
      body: JSON.stringify({ title: "t", logline: "x", genre: "opera", author: "a" }),
      code: "INVALID_ARGUMENT",
      status: 400,
    },
    {
      name: "a numeric title",
      body: JSON.stringify({ title: 5, logline: "x", genre: "drama", author: "a" }),
      code: "INVALID_ARGUMENT",
      status: 400,
    },
    {
      name: "a 20 kB body",
      body: JSON.stringify({ title: "x".repeat(20_000) }),
      code: "PAYLOAD_TOO_LARGE",
      status: 413,
    },
  ])("answers $name with $code", async ({ body, code, status }) => {
    const before = (await main().stats()).counters.granted;
    const r = await post("/api/pitches", body);
    expect(r.status).toBe(status);
    expect(await errorCode(r)).toBe(code);
    // Bad input is refused before any slot is taken.
    expect((await main().stats()).counters.granted).toBe(before);
  });

  it.each([
    ["/api/pitches/0", 400, "INVALID_ARGUMENT"],
    ["/api/pitches/abc", 400, "INVALID_ARGUMENT"],
    ["/api/pitches/999999999", 404, "NOT_FOUND"],
    ["/nowhere", 404, "NOT_FOUND"],
  ])("GET %s → %i %s", async (path, status, code) => {
    const r = await get(path);
    expect(r.status).toBe(status);
    expect(await errorCode(r)).toBe(code);
  });

  it.each([
    ["POST", "/api/pitches/trending", "GET"],
    ["DELETE", "/api/pitches/public", "GET"],
    ["GET", "/api/pitches", "POST"],
    ["PUT", "/api/pitches/1", "GET"],
    ["POST", "/__coordinator/", "GET"],
    ["POST", "/__coordinator/stats", "GET"],
    ["POST", "/__coordinator/metrics", "GET"],
    ["GET", "/__coordinator/pause", "POST"],
    ["GET", "/__coordinator/limit", "POST"],
  ])("%s %s → 405 with Allow: %s", async (method, path, allow) => {
    const before = (await main().stats()).counters.granted;
    const r = await get(path, { method, headers: auth, ...(method === "GET" ? {} : { body: "{}" }) });
    expect(r.status).toBe(405);
    expect(r.headers.get("allow")).toBe(allow);
    expect(await r.json()).toEqual({ error: { code: "METHOD_NOT_ALLOWED", message: `Use ${allow}` } });
    expect((await main().stats()).counters.granted).toBe(before);
  });

  it("reports health of the database and the coordinator", async () => {
    const r = await get("/health");
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({
      status: "ok",
      database: "up",
      coordinator: "up",
      breaker: { state: "closed" },
    });
  });

  it("keeps the stats behind the bearer token", async () => {
    expect((await get("/__coordinator/stats")).status).toBe(401);
    expect((await get("/__coordinator/stats", { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
    const ok = await get("/__coordinator/stats", { headers: auth });
    expect(ok.status).toBe(200);
    const s = (await ok.json()) as Record<string, unknown>;
    for (const key of ["limit", "held", "waiting", "maxWaitMs", "counters", "waitTimeMs", "leases"])
      expect(s).toHaveProperty(key);
    expect(s.pool).toBe("main");
  });

  it("answers overload with 503, Retry-After and a code, never a hang", async () => {
    const stub = main();
    const held = [];
    for (let i = 0; i < 3; i++) {
      const r = await stub.acquire({ holder: "blocker" });
      if (!r.ok) throw new Error(r.code);
      held.push(r.lease);
    }
    const started = Date.now();
    const timedOut = await get("/api/pitches/trending");
    expect(timedOut.status).toBe(503);
    expect(Number(timedOut.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await errorCode(timedOut)).toBe("ACQUIRE_TIMEOUT");
    expect(Date.now() - started).toBeLessThan(2000);

    const queued = Array.from({ length: 5 }, () => stub.acquire({ holder: "queued", waitMs: 3000 }));
    await expect.poll(async () => (await stub.stats()).waiting).toBe(5);
    const shed = await get("/api/pitches/trending");
    expect(shed.status).toBe(503);
    expect(await errorCode(shed)).toBe("QUEUE_FULL");
    expect(shed.headers.get("retry-after")).toMatch(/^\d+$/);

    const health = (await (await get("/health")).json()) as { database: string };
    expect(health.database).toBe("saturated");

    for (const l of held) await stub.release({ leaseId: l.id, fence: l.fence });
    for (const r of await Promise.all(queued))
      if (r.ok) await stub.release({ leaseId: r.lease.id, fence: r.lease.fence });
    expect((await stub.stats()).held).toBe(0);
  });

  it("never lets more connections reach Postgres than the limit, under rounds of concurrent requests", async () => {
    const appConnections = async () =>
      Number(
        (
          await observer`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${env.APPLICATION_NAME!}`
        )[0]!.n,
      );
    let peak = 0;
    let peakHeld = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await appConnections());
        peakHeld = Math.max(peakHeld, (await main().stats()).held);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    // Limit 3 plus a queue of 5: eight at once all get served, the rest of each round waits its turn.
    const statuses: number[] = [];
    for (let round = 0; round < 4; round++) {
      const responses = await Promise.all(
        Array.from({ length: 8 }, (_, i) => get(i % 2 ? "/api/pitches/trending" : "/api/pitches/public?limit=3")),
      );
      statuses.push(...responses.map((r) => r.status));
      await Promise.all(responses.map((r) => r.body?.cancel()));
    }
    sampling = false;
    await sampler;
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(peak).toBeGreaterThan(0);
    expect(peakHeld).toBeLessThanOrEqual(3);
    // A slot is released only after its connection is closed, but the server process behind it
    // exits a moment later: pg_stat_activity may show one closing backend beside the new one.
    // (That is why LEASE_LIMIT should sit a little below the database's own limit.)
    expect(peak).toBeLessThanOrEqual(3 + 1);
    await expect.poll(async () => (await main().stats()).held).toBe(0);
    await expect.poll(appConnections).toBe(0);
  });
});
