import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { CREATE_NOTES } from "#schema";

// What both Workers' tests share: the test's own connection (a superuser, through Hyperdrive's
// local mode), a login role with `CONNECTION LIMIT` for the leased connections, and a count of
// that role's backends in pg_stat_activity, read every few ms while a load runs.

type Worker = { fetch(request: Request, env: Cloudflare.Env, ctx: ExecutionContext): Promise<Response> };

/** Runs `fn` on a connection of its own, beside the Worker's. */
export async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString });
  client.on("error", () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export const createNotes = () => admin((c) => c.query(CREATE_NOTES));

/** Calls `worker` as workerd would, with `overrides` over the env; waits for its `waitUntil` work. */
export async function call(worker: Worker, path: string, init?: RequestInit, overrides: Partial<Cloudflare.Env> = {}) {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(`http://example.test${path}`, init), { ...env, ...overrides }, ctx);
  await waitOnExecutionContext(ctx);
  return response;
}

/**
 * Sends `n` concurrent GET /notes to `worker` as a role with `CONNECTION LIMIT limit` (Hyperdrive's
 * local mode passes the login through), counting that role's backends every ~5 ms. Answers each
 * response's status, code and Retry-After, and the most backends seen at once.
 */
export async function load(worker: Worker, n: number, limit: number) {
  const role = `orm_example_${Date.now().toString(36)}_${Math.floor(Math.random() * 1e6)}`;
  const sampler = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString });
  sampler.on("error", () => {});
  await sampler.connect();
  await sampler.query(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${limit}`);
  await sampler.query(`GRANT ALL ON orm_notes TO ${role}`);
  const url = new URL(env.HYPERDRIVE.connectionString);
  url.username = role;
  let peak = 0;
  let samples = 0;
  let running = true;
  const sampling = (async () => {
    while (running) {
      const { rows } = await sampler.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
        [role],
      );
      peak = Math.max(peak, rows[0].n as number);
      samples++;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  try {
    const hyperdrive = { ...env.HYPERDRIVE, connectionString: url.toString() };
    const answers = await Promise.all(
      Array.from({ length: n }, async () => {
        const response = await call(worker, "/notes", undefined, { HYPERDRIVE: hyperdrive });
        const body = (await response.json()) as { error?: { code: string } };
        return { status: response.status, code: body.error?.code, retryAfter: response.headers.get("retry-after") };
      }),
    );
    return { answers, peak, samples };
  } finally {
    running = false;
    await sampling;
    await sampler.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", [role]);
    for (let i = 0; i < 50; i++) {
      const { rows } = await sampler.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1", [
        role,
      ]);
      if (rows[0].n === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await sampler.query(`REVOKE ALL ON orm_notes FROM ${role}`);
    await sampler.query(`DROP ROLE IF EXISTS ${role}`);
    await sampler.end();
  }
}

/**
 * The tests both Workers pass in real workerd: the real coordinator Durable Object (LEASE_LIMIT 2,
 * LEASE_MAX_QUEUE 20 in each Worker's vitest config), Hyperdrive's local mode to a real Postgres,
 * node-postgres.
 */
export function describeNotesWorker(name: "Kysely" | "Prisma", worker: Worker): void {
  beforeAll(createNotes);
  const post = (body: unknown) =>
    call(worker, "/notes", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ body }),
    });
  const stats = () => env.COORDINATOR_DO.getByName("main").operatorStats();

  describe(`the ${name} Worker`, () => {
    it("writes a note in a transaction and reads it back, each under one lease that comes back", async () => {
      const before = (await stats()).counters.granted;
      const text = `${name.toLowerCase()}-${crypto.randomUUID()}`;
      const created = await post(text);
      expect(created.status).toBe(201);
      const note = (await created.json()) as { id: number; body: string };
      expect(note).toEqual({ id: expect.any(Number), body: text });
      const listed = await call(worker, "/notes");
      expect(listed.status).toBe(200);
      expect(((await listed.json()) as Array<{ id: number }>).map((n) => n.id)).toContain(note.id);
      // One lease for the transaction, one for the read.
      expect((await stats()).counters.granted - before).toBe(2);
      expect((await stats()).held).toBe(0);
      const { rows } = await admin((c) => c.query("SELECT body FROM orm_notes WHERE id = $1", [note.id]));
      expect(rows).toEqual([{ body: text }]);
    });

    it("refuses a bad note with 400 INVALID_ARGUMENT", async () => {
      const response = await post(42);
      expect(response.status).toBe(400);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
    });

    it("holds 60 concurrent requests to the limit of 2 in pg_stat_activity; every 503 carries Retry-After", async () => {
      const { answers, peak, samples } = await load(worker, 60, 2);
      const counts = answers.reduce<Record<string, number>>((acc, a) => {
        const key = `${a.status}${a.code ? ` ${a.code}` : ""}`;
        acc[key] = (acc[key] ?? 0) + 1;
        return acc;
      }, {});
      console.log(
        `${name}: 60 concurrent at limit 2: ${JSON.stringify(counts)}; peak ${peak} backends in ${samples} samples`,
      );
      expect(peak).toBeLessThanOrEqual(2);
      expect(peak).toBeGreaterThan(0);
      expect(answers.filter((a) => a.status === 200).length).toBeGreaterThan(0);
      for (const a of answers.filter((x) => x.status !== 200)) {
        expect(a.status).toBe(503);
        expect(["QUEUE_FULL", "ACQUIRE_TIMEOUT"]).toContain(a.code);
        expect(Number(a.retryAfter)).toBeGreaterThan(0);
      }
    });
  });
}
