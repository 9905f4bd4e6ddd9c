import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { desc } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { Hono } from "hono";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { counted } from "../support/counted.ts";
import { pitches } from "../support/pitches-table.ts";
import { Leases } from "../../src/client/leases.ts";
import { driver } from "../../src/drivers/pg.ts";
import { leased } from "../../src/hono.ts";

// The Hono middleware in real workerd: the real coordinator Durable Object (LEASE_LIMIT 3,
// LEASE_MAX_QUEUE 5, LEASE_WAIT_MS 400 in the test config), Hyperdrive's local mode to the real
// Postgres, a node-postgres Client per request, Drizzle on top.
type AppEnv = { Bindings: Cloudflare.Env };
const APP = `hono-workerd-${Date.now()}`;
let seq = 0;

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString });
  client.on("error", () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}
const backends = (app: string) =>
  admin(
    async (c) =>
      (await c.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [app])).rows[0]
        .n as number,
  );

/** A fresh pool (one Durable Object), an app on it, and a way to call the app as workerd would. */
function setup() {
  const name = `hono-${Date.now()}-${++seq}`;
  const app = `${APP}-${seq}`;
  const leases = new Leases(env.COORDINATOR_DO.getByName(name));
  const calls: string[] = [];
  const hono = new Hono<AppEnv>()
    .onError((_e, c) => c.text("handler error", 500))
    .use(
      "/api/*",
      leased({
        leases: (c) => counted(new Leases(c.env.COORDINATOR_DO.getByName(name)), calls),
        driver,
        connectionString: (c) => c.env.HYPERDRIVE.connectionString,
        applicationName: app,
      }),
    );
  const request = async (path: string, init?: RequestInit) => {
    const ctx = createExecutionContext();
    const background: Array<Promise<unknown>> = [];
    const response = await hono.fetch(new Request(`http://example.test${path}`, init), env, {
      waitUntil: (p: Promise<unknown>) => {
        background.push(p);
        ctx.waitUntil(p);
      },
      passThroughOnException: () => {},
      props: {},
    } as unknown as ExecutionContext);
    await waitOnExecutionContext(ctx);
    return { response, background: background.length };
  };
  return { hono, request, leases, calls, app };
}

describe("leased() in workerd with the Durable Object, Hyperdrive and node-postgres", () => {
  it("acquires on first use, closes and releases in waitUntil, and leaves nothing open", async () => {
    const t = setup();
    t.hono.get("/api/n", async (c) => {
      const client = await c.var.client();
      const again = await c.var.client();
      const { rows } = await client.query("SELECT $1::int + 1 AS n", [41]);
      return c.json({ n: rows[0].n, same: client === again, held: (await t.leases.stats()).held });
    });
    const { response, background } = await t.request("/api/n");
    expect(await response.json()).toEqual({ n: 42, same: true, held: 1 });
    expect(background).toBe(1);
    expect(t.calls).toEqual(["acquire", "release"]);
    expect(await t.leases.stats()).toMatchObject({ held: 0, counters: { granted: 1, released: 1 } });
    expect(await backends(t.app)).toBe(0);
  });

  it("makes no coordinator call for a handler that never asks", async () => {
    const t = setup();
    t.hono.get("/api/free", (c) => c.text("free"));
    const { response, background } = await t.request("/api/free");
    expect(response.status).toBe(200);
    expect(background).toBe(0);
    expect(t.calls).toEqual([]);
    expect((await t.leases.stats()).counters.granted).toBe(0);
  });

  it("releases the lease and closes the connection when the handler throws", async () => {
    const t = setup();
    t.hono.get("/api/boom", async (c) => {
      await (await c.var.client()).query("SELECT 1");
      throw new Error("handler failed");
    });
    const { response } = await t.request("/api/boom");
    expect(response.status).toBe(500);
    expect(t.calls).toEqual(["acquire", "release"]);
    expect((await t.leases.stats()).held).toBe(0);
    expect(await backends(t.app)).toBe(0);
  });

  it("answers 503 + Retry-After with QUEUE_FULL when the pool and its queue are full, ACQUIRE_TIMEOUT at the pool's deadline", async () => {
    const t = setup();
    t.hono.get("/api/q", async (c) => c.json((await (await c.var.client()).query("SELECT 1 AS one")).rows));
    const held = await Promise.all([1, 2, 3].map(() => t.leases.acquire({ holder: "filler" })));
    // Five waiters fill the queue (LEASE_MAX_QUEUE 5); each gives its slot straight back once granted.
    const waiters = [1, 2, 3, 4, 5].map(() =>
      t.leases.acquire({ holder: "waiter", waitMs: 10_000 }).then((l) => t.leases.release(l)),
    );
    await expect.poll(async () => (await t.leases.stats()).waiting).toBe(5);
    const full = await t.request("/api/q");
    expect(full.response.status).toBe(503);
    expect(Number(full.response.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const body = (await full.response.json()) as { error: { code: string; message: string; retryAfterMs: number } };
    expect(body.error).toMatchObject({
      code: "QUEUE_FULL",
      message: expect.any(String),
      retryAfterMs: expect.any(Number),
    });

    for (const l of held) await t.leases.release(l);
    await Promise.all(waiters);
    // The pool full again but the queue open: the request waits LEASE_WAIT_MS (400 ms), then 503.
    const again = await Promise.all([1, 2, 3].map(() => t.leases.acquire({ holder: "filler" })));
    const started = Date.now();
    const timedOut = await t.request("/api/q");
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    expect(timedOut.response.status).toBe(503);
    expect(timedOut.response.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(((await timedOut.response.json()) as { error: { code: string } }).error.code).toBe("ACQUIRE_TIMEOUT");
    for (const l of again) await t.leases.release(l);

    expect((await t.request("/api/q")).response.status).toBe(200);
    expect((await t.leases.stats()).held).toBe(0);
  });

  it("runs a Drizzle select, and rolls a Drizzle transaction back when it throws", async () => {
    const t = setup();
    const title = `hono-workerd-tx-${Date.now()}`;
    t.hono.get("/api/trending", async (c) => {
      const db = drizzle(await c.var.client());
      return c.json(
        await db
          .select({ id: pitches.id, title: pitches.title })
          .from(pitches)
          .orderBy(desc(pitches.viewCount))
          .limit(2),
      );
    });
    t.hono.post("/api/pitch", async (c) => {
      const db = drizzle(await c.var.client());
      await db.transaction(async (tx) => {
        await tx.insert(pitches).values({ title, logline: "l", genre: "drama", author: "a" } as never);
        throw new Error("roll it back");
      });
      return c.text("unreachable");
    });
    const trending = await t.request("/api/trending");
    expect(trending.response.status).toBe(200);
    const rows = (await trending.response.json()) as Array<{ id: number; title: string }>;
    expect(rows).toHaveLength(2);
    expect(rows[0]).toEqual({ id: expect.any(Number), title: expect.any(String) });

    expect((await t.request("/api/pitch", { method: "POST" })).response.status).toBe(500);
    expect(await admin(async (c) => (await c.query("SELECT 1 FROM pitches WHERE title = $1", [title])).rowCount)).toBe(
      0,
    );
    expect(await t.leases.stats()).toMatchObject({ held: 0, counters: { granted: 2, released: 2 } });
    expect(await backends(t.app)).toBe(0);
  });
});
