import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import type { DriverModule } from "../../src/db/driver.ts";
import { driver as pgDriver } from "../../src/drivers/pg.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { errorResponse } from "../../src/http/respond.ts";
import { type PgQueryClient, leaseErrorOf, leasedAdapter } from "../../src/prisma.ts";
import { type Scene, codeOf, isTooMany, leasedDriver, poolEnv, scene, sleep } from "../limit/harness.ts";
import { generatePrismaClients } from "./prisma-client.ts";

// Prisma 7 with a generated client (test/orm/schema.prisma) on the local adapter against the real
// Postgres: the leased connections log in as a role with `CONNECTION LIMIT` (the harness), each
// with an application name of its own, and a sampler counts that role's backends.

/** What the tests use of the generated client (it is generated at run time, so typed here). */
interface Notes {
  note: {
    create(args: { data: { body: string } }): Promise<{ id: number; body: string }>;
    findMany(args: { where: { body: { in: string[] } } }): Promise<Array<{ id: number; body: string }>>;
    count(args: { where: { body: string } }): Promise<number>;
  };
  $transaction<T>(fn: (tx: Notes) => Promise<T>, options?: { timeout?: number; maxWait?: number }): Promise<T>;
  $queryRawUnsafe<T>(text: string, ...values: unknown[]): Promise<T>;
  $disconnect(): Promise<void>;
}
type NotesClient = new (options: { adapter: ReturnType<typeof leasedAdapter> }) => Notes;

let s: Scene;
let PrismaClient: NotesClient;
let pool: LocalPool<PgQueryClient>;
let prisma: Notes;

const granted = async () => (await pool.operator!.stats()).counters.granted;

beforeAll(async () => {
  generatePrismaClients();
  const generated = pathToFileURL(
    join(import.meta.dirname, "..", "..", "test-artifacts", "prisma", "node", "client.ts"),
  );
  ({ PrismaClient } = (await import(generated.href)) as { PrismaClient: NotesClient });
  s = await scene(3);
  await s.admin.unsafe(
    `CREATE TABLE IF NOT EXISTS prisma_notes (id serial PRIMARY KEY, body text NOT NULL UNIQUE); GRANT ALL ON prisma_notes TO ${s.role.name}; GRANT ALL ON SEQUENCE prisma_notes_id_seq TO ${s.role.name}`,
  );
  pool = await localPool(poolEnv(s.pool, { LEASE_LIMIT: "3" }), {
    driver: leasedDriver(s.role.url, s.log, pgDriver as DriverModule<PgQueryClient>),
  });
  prisma = new PrismaClient({ adapter: leasedAdapter(pool, { holder: "prisma-test" }) });
}, 60_000);

afterAll(async () => {
  await prisma?.$disconnect();
  await pool?.close();
  await s?.admin.unsafe("DROP TABLE IF EXISTS prisma_notes").catch(() => {});
  await s?.end();
});

const unique = (label: string) => `${label}-${Date.now()}-${Math.random().toString(36).slice(2)}`;

describe("leasedAdapter with a generated Prisma client on Node", () => {
  it("runs each query on a lease and a connection of its own", async () => {
    const before = await granted();
    const opened = s.log.opened.size;
    const a = await prisma.note.create({ data: { body: unique("a") } });
    const b = await prisma.note.create({ data: { body: unique("b") } });
    const found = await prisma.note.findMany({ where: { body: { in: [a.body, b.body] } } });
    expect(found.map((n) => n.id).sort()).toEqual([a.id, b.id].sort());
    expect((await granted()) - before).toBe(3);
    expect(s.log.opened.size - opened).toBe(3);
    expect((await pool.operator!.stats()).held).toBe(0);
  });

  it("runs an interactive transaction under one lease on one backend, and commits it", async () => {
    const before = await granted();
    const opened = s.log.opened.size;
    const bodies = [unique("t1"), unique("t2")];
    const pids = await prisma.$transaction(async (tx) => {
      const seen: number[] = [];
      for (const body of bodies) {
        await tx.note.create({ data: { body } });
        const [row] = await tx.$queryRawUnsafe<Array<{ pid: number }>>("SELECT pg_backend_pid() AS pid");
        seen.push(row!.pid);
      }
      expect((await pool.operator!.stats()).held).toBe(1);
      return seen;
    });
    expect(new Set(pids).size).toBe(1);
    expect((await granted()) - before).toBe(1);
    expect(s.log.opened.size - opened).toBe(1);
    expect(await prisma.note.count({ where: { body: bodies[1]! } })).toBe(1);
  });

  it("rolls back a transaction that throws, closes its connection, then gives its slot back", async () => {
    const body = unique("rollback");
    const opened = new Set(s.log.opened.keys());
    await expect(
      prisma.$transaction(async (tx) => {
        await tx.note.create({ data: { body } });
        throw new Error("the app's own failure");
      }),
    ).rejects.toThrow("the app's own failure");
    const app = [...s.log.opened.keys()].find((a) => !opened.has(a))!;
    // Prisma releases the transaction's connection without awaiting it: the close comes right after.
    await expect.poll(() => s.log.closed.has(app), { timeout: 2000 }).toBe(true);
    await expect.poll(async () => (await pool.operator!.stats()).held, { timeout: 2000 }).toBe(0);
    expect(await prisma.note.count({ where: { body } })).toBe(0);
  });

  it("keeps Prisma's own error codes for statements the database refused (P2002 on a unique violation)", async () => {
    const body = unique("dup");
    await prisma.note.create({ data: { body } });
    const error = await prisma.note.create({ data: { body } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "P2002" });
    expect((await pool.operator!.stats()).held).toBe(0);
  });

  it("cancels an interactive transaction's statement at its deadline and answers DEADLINE_EXCEEDED", async () => {
    const short = new PrismaClient({ adapter: leasedAdapter(pool, { deadlineMs: 800 }) });
    const marker = "pg_sleep(5) /* prisma-deadline */";
    try {
      const started = Date.now();
      const error = await short
        .$transaction(async (tx) => tx.$queryRawUnsafe(`SELECT ${marker}`), { timeout: 10_000 })
        .catch((e: unknown) => e);
      expect(codeOf(error)).toBe("DEADLINE_EXCEEDED");
      expect(errorResponse(leaseErrorOf(error) ?? error).status).toBe(504);
      expect(Date.now() - started).toBeLessThan(4000);
      await s.sampler.until((x) => x.local > Date.now() - 1 && !x.backends.some((b) => b.query.includes(marker)), 3000);
      await expect.poll(async () => (await pool.operator!.stats()).held, { timeout: 3000 }).toBe(0);
    } finally {
      await short.$disconnect();
    }
  });

  it("refuses a pool on a driver whose clients Prisma's adapter cannot speak, with INVALID_CONFIG", async () => {
    const other = await localPool(poolEnv(s.pool, { LEASE_LIMIT: "3" }), {
      driver: leasedDriver(s.role.url, s.log, postgresDriver as DriverModule<unknown>),
    });
    const client = new PrismaClient({ adapter: leasedAdapter(other as unknown as LocalPool<PgQueryClient>) });
    try {
      const error = await client.note.count({ where: { body: "x" } }).catch((e: unknown) => e);
      expect(leaseErrorOf(error)?.code).toBe("INVALID_CONFIG");
      expect((await other.operator!.stats()).held).toBe(0);
    } finally {
      await client.$disconnect();
      await other.close();
    }
  });

  it("holds 60 concurrent queries to the limit of 3 in pg_stat_activity; every refusal is a 503 with Retry-After", async () => {
    const loaded = await localPool(
      poolEnv(s.pool, { LEASE_LIMIT: "3", LEASE_MAX_QUEUE: "20", LEASE_WAIT_MS: "1500" }),
      {
        driver: leasedDriver(s.role.url, s.log, pgDriver as DriverModule<PgQueryClient>),
      },
    );
    const client = new PrismaClient({ adapter: leasedAdapter(loaded) });
    try {
      const from = s.sampler.samples.length;
      const outcomes = await Promise.all(
        Array.from({ length: 60 }, () =>
          client.$queryRawUnsafe("SELECT 1 AS one FROM pg_sleep(0.05)").then(
            () => ({ ok: true as const }),
            (error: unknown) => ({ ok: false as const, error }),
          ),
        ),
      );
      await sleep(50);
      const peak = Math.max(0, ...s.sampler.samples.slice(from).map((x) => x.backends.length));
      const failures = outcomes.filter((o) => !o.ok).map((o) => (o as { error: unknown }).error);
      const ok = outcomes.length - failures.length;
      console.log(`[orm] prisma 60 concurrent at limit 3: ${ok} ok, ${failures.length} refused; peak ${peak} backends`);
      expect(peak).toBeLessThanOrEqual(3);
      expect(peak).toBeGreaterThan(0);
      expect(ok).toBeGreaterThan(0);
      expect(failures.some(isTooMany)).toBe(false);

      for (const error of failures) {
        // Prisma's own error, with leasegate's code; the LeaseError behind it answers 503.
        expect(error).toMatchObject({ name: "PrismaClientKnownRequestError" });
        expect(["QUEUE_FULL", "ACQUIRE_TIMEOUT"]).toContain(codeOf(error));
        expect(leaseErrorOf(error)?.code).toBe(codeOf(error));
        const response = errorResponse(leaseErrorOf(error) ?? error);
        expect(response.status).toBe(503);
        expect(Number(response.headers.get("retry-after"))).toBeGreaterThan(0);
      }
    } finally {
      await client.$disconnect();
      await loaded.close();
    }
  }, 30_000);
});
