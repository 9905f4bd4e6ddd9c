import { env, exports } from "cloudflare:workers";
import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";

// The Worker as deployed, in real workerd: its routes through `exports.default.fetch`, the real
// coordinator Durable Object (LEASE_LIMIT 2, LEASE_MAX_QUEUE 1 in vitest.config.ts), Hyperdrive's
// local mode to a real Postgres, node-postgres and Drizzle.
const request = (path: string, init?: RequestInit) =>
  exports.default.fetch(new Request(`http://notes.test${path}`, init));
const post = (path: string, body: unknown) =>
  request(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
const coordinator = () => env.COORDINATOR_DO.getByName("main");

/** The test's own connection to the database, beside the Worker's. */
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
const bodies = (like: string) =>
  admin(async (c) =>
    (await c.query("SELECT body FROM notes WHERE body LIKE $1 ORDER BY id", [like])).rows.map((r) => r.body as string),
  );

beforeAll(() =>
  admin((c) =>
    c.query(
      "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    ),
  ),
);

describe("the notes Worker", () => {
  it("answers /health with the database and the coordinator up", async () => {
    const response = await request("/health");
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: "ok", database: "up", coordinator: "up" });
  });

  it("writes a note and reads it back with Drizzle, under leases that all come back", async () => {
    const before = (await coordinator().stats()).counters.granted;
    const text = `note-${crypto.randomUUID()}`;
    const created = await post("/notes", { body: text });
    expect(created.status).toBe(201);
    const note = (await created.json()) as { id: number; body: string; createdAt: string };
    expect(note).toMatchObject({ id: expect.any(Number), body: text, createdAt: expect.any(String) });

    const listed = await request("/notes");
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as Array<{ id: number }>).map((n) => n.id)).toContain(note.id);
    await expect.poll(async () => (await coordinator().stats()).held).toBe(0);
    expect((await coordinator().stats()).counters.granted - before).toBe(2);
  });

  it("refuses a bad note with 400 INVALID_ARGUMENT and takes no lease", async () => {
    const before = (await coordinator().stats()).counters.granted;
    const response = await post("/notes", { body: "" });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
    expect((await coordinator().stats()).counters.granted).toBe(before);
  });

  it("commits a pair of notes in one Drizzle transaction, and rolls it back when it throws", async () => {
    const tag = `pair-${crypto.randomUUID()}`;
    const committed = await post("/notes/pair", { first: `${tag}-a`, second: `${tag}-b` });
    expect(committed.status).toBe(201);
    expect(await bodies(`${tag}-%`)).toEqual([`${tag}-a`, `${tag}-b`]);

    const failed = await post("/notes/pair", { first: `${tag}-c`, second: `${tag}-d`, fail: true });
    // The handler's own error (no driver code) answers INTERNAL, without its text.
    expect(failed.status).toBe(500);
    expect(((await failed.json()) as { error: { code: string } }).error.code).toBe("INTERNAL");
    // The first insert ran inside the transaction, then the throw rolled it back.
    expect(await bodies(`${tag}-%`)).toEqual([`${tag}-a`, `${tag}-b`]);
    await expect.poll(async () => (await coordinator().stats()).held).toBe(0);
  });

  it("retries the report on a fresh backend when its backend is terminated (57P01) and still answers 200", async () => {
    const before = (await coordinator().stats()).counters.granted;
    const report = request("/report");
    // The report's backend, found by its application_name (APPLICATION_NAME) while it sleeps,
    // terminated from here.
    const victim = await admin(async (c) => {
      let pid: number | undefined;
      await expect
        .poll(async () => {
          const { rows } = await c.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'notes-example' AND state = 'active' AND query LIKE '%pg_sleep%'",
          );
          pid = rows[0]?.pid;
          return rows.length;
        })
        .toBe(1);
      const { rows } = await c.query("SELECT pg_terminate_backend($1) AS ok", [pid]);
      expect(rows[0].ok).toBe(true);
      return pid!;
    });
    const response = await report;
    expect(response.status).toBe(200);
    const row = (await response.json()) as { notes: number; backend: number };
    expect(row.notes).toEqual(expect.any(Number));
    // Answered by a second backend, under a second lease: the statement really ran again.
    expect(row.backend).not.toBe(victim);
    await expect.poll(async () => (await coordinator().stats()).held).toBe(0);
    expect((await coordinator().stats()).counters.granted - before).toBe(2);
  });

  it("sheds overload with 503 QUEUE_FULL and Retry-After while slow reports hold both slots and the one queue place", async () => {
    const reports = [request("/report"), request("/report")];
    await expect.poll(async () => (await coordinator().stats()).held, { interval: 10 }).toBe(2);
    reports.push(request("/report"));
    await expect.poll(async () => (await coordinator().stats()).waiting, { interval: 10 }).toBe(1);
    // The pool full and its queue full: the Hono route (leased()) and the database layer shed alike.
    for (const shed of await Promise.all([request("/notes"), request("/report")])) {
      expect(shed.status).toBe(503);
      expect(Number(shed.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(((await shed.json()) as { error: { code: string } }).error.code).toBe("QUEUE_FULL");
    }
    // The queued report got its slot when one freed.
    expect((await Promise.all(reports)).map((r) => r.status)).toEqual([200, 200, 200]);
    await expect.poll(async () => (await coordinator().stats()).held).toBe(0);
  });

  it("serves the operator stats only with the bearer token", async () => {
    expect((await request("/__coordinator/stats")).status).toBe(401);
    expect((await request("/__coordinator/stats", { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
    const response = await request("/__coordinator/stats", { headers: { authorization: "Bearer test-token" } });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ limit: 2, held: expect.any(Number), waiting: expect.any(Number) });
  });
});
