import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { driver } from "leasegate/pg";
import { beforeAll, describe, expect, it } from "vitest";
// The Worker module itself, for its `scheduled` handler (`#worker`: this package's own import map).
import worker from "#worker";

// The Worker as deployed, in real workerd: its routes through `exports.default.fetch`, the real
// coordinator Durable Object (LEASE_LIMIT 2 in vitest.config.ts), Hyperdrive's local mode to a real
// Postgres, and the node-postgres version this example was installed with.
const request = (path: string, init?: RequestInit) =>
  exports.default.fetch(new Request(`http://plain-pg.test${path}`, init));
const post = (body: unknown) =>
  request("/notes", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ body }),
  });
const stats = async () =>
  (await (await request("/__coordinator/stats", { headers: { authorization: "Bearer test-token" } })).json()) as {
    limit: number;
    held: number;
    counters: { granted: number };
    reconciliation: { checkedAt: number } | null;
  };

// @types/pg types the client `pool.sql` hands out; without it the client would silently be `any`.
type IsAny<T> = 0 extends 1 & T ? true : false;
const typed: IsAny<Awaited<ReturnType<typeof driver.connect>>["client"]> = false;

beforeAll(async () => {
  // The test's own connection, beside the Worker's.
  const conn = await driver.connect({
    connectionString: env.HYPERDRIVE.connectionString,
    applicationName: "plain-pg-setup",
    connectTimeoutMs: 5000,
    edge: true,
  });
  try {
    await conn.query(
      "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    );
  } finally {
    await conn.close();
  }
});

describe("the plain Worker on node-postgres", () => {
  it("writes a note in a transaction and reads it back, under leases that all come back", async () => {
    expect(typed).toBe(false);
    const before = (await stats()).counters.granted;
    const text = `note-${crypto.randomUUID()}`;
    const created = await post(text);
    expect(created.status).toBe(201);
    const note = (await created.json()) as { id: number; body: string };
    expect(note).toEqual({ id: expect.any(Number), body: text });
    const listed = await request("/notes");
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as Array<{ id: number }>).map((n) => n.id)).toContain(note.id);
    await expect.poll(async () => (await stats()).held).toBe(0);
    expect((await stats()).counters.granted - before).toBe(2);
  });

  it("serves more concurrent requests than its limit of 2, all under leases", async () => {
    const before = (await stats()).counters.granted;
    const responses = await Promise.all(Array.from({ length: 6 }, () => request("/notes")));
    expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    const after = await stats();
    expect(after.limit).toBe(2);
    expect(after.counters.granted - before).toBe(6);
  });

  it("refuses a bad note with 400 INVALID_ARGUMENT", async () => {
    const response = await post(42);
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
  });

  it("reconciles with pg_stat_activity from its cron handler", async () => {
    expect((await stats()).reconciliation).toBeNull();
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    expect((await stats()).reconciliation).toMatchObject({ checkedAt: expect.any(Number) });
  });
});
