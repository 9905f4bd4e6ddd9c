import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
// The Worker module itself, called with the env a test gives it (`#kysely`: this package's own import map).
import worker from "#kysely";
import { admin, call, createNotes, load } from "./support.ts";

// The Kysely Worker in real workerd: the real coordinator Durable Object (LEASE_LIMIT 2, LEASE_MAX_QUEUE 20
// in vitest.kysely.config.ts), Hyperdrive's local mode to a real Postgres, node-postgres.
const post = (body: unknown) =>
  call(worker, "/notes", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ body }),
  });
const stats = () => env.COORDINATOR_DO.getByName("main").operatorStats();

beforeAll(createNotes);

describe("the Kysely Worker", () => {
  it("writes a note in a transaction and reads it back, each under one lease that comes back", async () => {
    const before = (await stats()).counters.granted;
    const text = `kysely-${crypto.randomUUID()}`;
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
      `kysely: 60 concurrent at limit 2: ${JSON.stringify(counts)}; peak ${peak} backends in ${samples} samples`,
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
