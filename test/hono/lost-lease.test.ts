import { Hono } from "hono";
import type pg from "pg";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import type { DriverModule } from "../../src/db/driver.ts";
import { driver as pgDriver } from "../../src/drivers/pg.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { leased } from "../../src/hono.ts";
import { startSampler } from "../limit/sampler.ts";
import { forgetPools } from "../local/helpers.ts";

// The Hono middleware on a real Hono app, real Postgres, the real local coordinator: an operator
// revokes the lease while the handler's statement runs. The holder hears of it at its next renewal;
// then the statement is cancelled, the client closed, and the request answered 503 LEASE_LOST.
const url = process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/leasegate_test";
const admin = postgres(url, { max: 2, onnotice: () => {} });
const base = `hono-lost-${process.pid}-${Date.now()}`;
const coordinators: PostgresCoordinator[] = [];
const clients: postgres.Sql[] = [];
let seq = 0;

afterAll(async () => {
  for (const c of coordinators) await c.close();
  await forgetPools(admin, `${base}-%`);
  for (const s of clients) await s.end();
  await admin.end();
});

function coordinator(): PostgresCoordinator {
  const sql = postgres(url, { max: 3, onnotice: () => {} });
  clients.push(sql);
  const c = new PostgresCoordinator({
    sql,
    pool: `${base}-${++seq}`,
    config: { limit: 1, maxQueue: 10, waitMs: 2000, leaseTtlMs: 900 },
  });
  coordinators.push(c);
  return c;
}

/** Backends of `app` as Postgres counts them, sampled every 10 ms while the test runs. */
const sampler = (app: string) => startSampler((text, params) => admin.unsafe(text, params as never[]), { app });

const CLIENTS: Record<string, { driver: DriverModule; sleep: (client: unknown) => Promise<unknown> }> = {
  "node-postgres": {
    driver: pgDriver,
    sleep: async (client: unknown) => (client as pg.Client).query("SELECT pg_sleep(5)"),
  },
  "postgres.js": {
    driver: postgresDriver,
    sleep: async (client: unknown) => (client as postgres.Sql)`SELECT pg_sleep(5)`,
  },
};

describe.each(Object.keys(CLIENTS))("leased() with %s", (name) => {
  it("a revoked lease cancels the handler's statement and closes its client: 503 LEASE_LOST, the backend gone within 100 ms", async () => {
    const app = `hono-lost-${process.pid}-${++seq}`;
    const { driver, sleep } = CLIENTS[name]!;
    const c = coordinator();
    const leases = new Leases(c);
    const api = new Hono()
      .onError((_e, ctx) => ctx.text("handler error", 500))
      .use(leased({ leases, driver, connectionString: () => url, applicationName: app }))
      .get("/sleep", async (ctx) => ctx.json(await sleep(await ctx.var.client())));
    const watch = await sampler(app);
    const response = api.request("/sleep");
    await watch.until((s) => s.backends.length > 0);
    const [held] = (await c.operatorStats()).leases;
    await c.revoke(held!.idPrefix);
    const revokedAt = Date.now();
    const res = await response;
    const answeredAt = Date.now();
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: { code: "LEASE_LOST" } });
    // Heard at the next renewal: a third of the 900 ms TTL.
    expect(answeredAt - revokedAt).toBeLessThan(600);
    const goneMs = await watch.goneAfter(answeredAt);
    await watch.stop();
    expect(goneMs).toBeLessThanOrEqual(100);
    console.log(
      `figure hono ${name}: answered ${answeredAt - revokedAt} ms after the revoke; backend gone ${goneMs} ms after it`,
    );
  }, 15_000);
});
