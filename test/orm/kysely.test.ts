import { type Generated, Kysely, isAbortedTransactionError, sql } from "kysely";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPool } from "../../local/pool.ts";
import { localPool } from "../../local/pool.ts";
import type { DriverModule } from "../../src/db/driver.ts";
import { driver as pgDriver } from "../../src/drivers/pg.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { errorResponse } from "../../src/http/respond.ts";
import { LeasedDialect } from "../../src/kysely.ts";
import { leasedAdapter } from "../../src/prisma.ts";
import { type Scene, codeOf, isTooMany, leasedDriver, poolEnv, scene, sleep } from "../limit/harness.ts";

// Kysely on the local adapter against the real Postgres: the leased connections log in as a role
// with `CONNECTION LIMIT` (the harness), each with an application name of its own, and a sampler
// counts that role's backends in pg_stat_activity.
interface Database {
  kysely_notes: { id: Generated<number>; body: string };
}

let s: Scene;
let table = "";

beforeAll(async () => {
  s = await scene(3);
  table = "kysely_notes";
  await s.admin.unsafe(
    `CREATE TABLE IF NOT EXISTS ${table} (id serial PRIMARY KEY, body text NOT NULL); GRANT ALL ON ${table} TO ${s.role.name}; GRANT ALL ON SEQUENCE ${table}_id_seq TO ${s.role.name}`,
  );
}, 30_000);

afterAll(async () => {
  await s?.admin.unsafe(`DROP TABLE IF EXISTS ${table}`).catch(() => {});
  await s?.end();
});

/** A pool of the scene on `driver` (postgres.js or node-postgres), its connections logged; a Kysely over it. */
async function open<C>(driver: DriverModule<C>, extra: Record<string, string> = {}) {
  const pool = await localPool(poolEnv(s.pool, { LEASE_LIMIT: "3", ...extra }), {
    driver: leasedDriver<C>(s.role.url, s.log, driver),
  });
  return { pool, db: new Kysely<Database>({ dialect: new LeasedDialect({ pool, holder: "kysely-test" }) }) };
}

const granted = async (pool: LocalPool<unknown>) => (await pool.operator!.stats()).counters.granted;

describe.each([
  ["postgres.js", postgresDriver as DriverModule<unknown>],
  ["node-postgres", pgDriver as DriverModule<unknown>],
])("LeasedDialect on %s", (_name, driver) => {
  let pool: LocalPool<unknown>;
  let db: Kysely<Database>;

  beforeAll(async () => {
    ({ pool, db } = await open(driver));
  });
  afterAll(async () => {
    await db?.destroy();
    await pool?.close();
  });

  it("runs each query on a lease and a connection of its own, with the rows it touched", async () => {
    const before = await granted(pool);
    const opened = s.log.opened.size;
    const inserted = await db
      .insertInto("kysely_notes")
      .values([{ body: "a" }, { body: "b" }])
      .returning("id")
      .execute();
    expect(inserted).toHaveLength(2);
    const ids = inserted.map((r) => r.id);
    const updated = await db.updateTable("kysely_notes").set({ body: "c" }).where("id", "in", ids).executeTakeFirst();
    expect(updated.numUpdatedRows).toBe(2n);
    const rows = await db.selectFrom("kysely_notes").select(["id", "body"]).where("id", "in", ids).execute();
    expect(rows.map((r) => r.body)).toEqual(["c", "c"]);
    // Three queries: three leases, three connections, all closed.
    expect((await granted(pool)) - before).toBe(3);
    expect(s.log.opened.size - opened).toBe(3);
    expect((await pool.operator!.stats()).held).toBe(0);
  });

  it("runs a transaction under one lease on one backend, and commits it", async () => {
    const before = await granted(pool);
    const opened = s.log.opened.size;
    const pids = await db.transaction().execute(async (trx) => {
      const seen: number[] = [];
      for (const body of ["t1", "t2", "t3"]) {
        await trx.insertInto("kysely_notes").values({ body }).execute();
        const { rows } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx);
        seen.push(rows[0]!.pid);
      }
      // The transaction's own lease is the only one held.
      expect((await pool.operator!.stats()).held).toBe(1);
      return seen;
    });
    expect(new Set(pids).size).toBe(1);
    expect((await granted(pool)) - before).toBe(1);
    expect(s.log.opened.size - opened).toBe(1);
    const count = await db
      .selectFrom("kysely_notes")
      .select((eb) => eb.fn.countAll<string>().as("n"))
      .where("body", "in", ["t1", "t2", "t3"])
      .executeTakeFirstOrThrow();
    expect(Number(count.n)).toBeGreaterThanOrEqual(3);
  });

  it("rolls back a transaction that throws, closes its connection, then gives its slot back", async () => {
    const marker = `rollback-${Date.now()}-${Math.random()}`;
    const opened = new Set(s.log.opened.keys());
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("kysely_notes").values({ body: marker }).execute();
        throw new Error("the app's own failure");
      }),
    ).rejects.toThrow("the app's own failure");
    const app = [...s.log.opened.keys()].find((a) => !opened.has(a))!;
    expect(s.log.closed.has(app), "closed before the transaction's caller was answered").toBe(true);
    expect((await pool.operator!.stats()).held).toBe(0);
    const rows = await db.selectFrom("kysely_notes").select("id").where("body", "=", marker).execute();
    expect(rows).toEqual([]);
  });

  it("throws Kysely's AbortedTransactionError for a COMMIT the database answered with ROLLBACK", async () => {
    const marker = `aborted-${Date.now()}-${Math.random()}`;
    const error = await db
      .transaction()
      .execute(async (trx) => {
        await trx.insertInto("kysely_notes").values({ body: marker }).execute();
        // The app swallows a failed statement; the transaction is aborted all the same.
        await sql`SELECT * FROM kysely_no_such_table`.execute(trx).catch(() => {});
      })
      .catch((e: unknown) => e);
    expect(isAbortedTransactionError(error)).toBe(true);
    expect(await db.selectFrom("kysely_notes").select("id").where("body", "=", marker).execute()).toEqual([]);
    expect((await pool.operator!.stats()).held).toBe(0);
  });

  it("streams rows in chunks", async () => {
    const rows: number[] = [];
    for await (const row of db
      .selectFrom(sql<{ n: number }>`(SELECT generate_series(1, 5) AS n)`.as("s"))
      .select("s.n")
      .stream(2))
      rows.push(Number(row.n));
    expect(rows).toEqual([1, 2, 3, 4, 5]);
  });

  it("fails a statement with the driver's own error, and still closes and releases", async () => {
    const before = await granted(pool);
    await expect(sql`SELECT * FROM kysely_no_such_table`.execute(db)).rejects.toMatchObject({ code: "42P01" });
    expect((await granted(pool)) - before).toBe(1);
    expect((await pool.operator!.stats()).held).toBe(0);
  });
});

describe("LeasedDialect and leasedAdapter check their options", () => {
  const pool = { sql: async () => undefined } as unknown as LocalPool<never>;
  it.each([
    [{ waitMs: -1 }, "waitMs"],
    [{ waitMs: 1.5 }, "waitMs"],
    [{ deadlineMs: 0 }, "deadlineMs"],
    [{ holder: 7 as unknown as string }, "holder"],
  ])("refuses %o with INVALID_ARGUMENT naming %s", (options, name) => {
    for (const make of [() => new LeasedDialect({ pool, ...options }), () => leasedAdapter(pool, options)]) {
      const error = (() => {
        try {
          make();
        } catch (e) {
          return e;
        }
      })();
      expect(error).toMatchObject({ code: "INVALID_ARGUMENT" });
      expect((error as Error).message).toContain(`\`${name}\``);
    }
  });

  it("refuses a missing pool with INVALID_ARGUMENT", () => {
    expect(() => new LeasedDialect({} as never)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => leasedAdapter(undefined as never)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
  });
});

describe("LeasedDialect's connections end with their deadline", () => {
  it("cancels a single query at the deadline and answers DEADLINE_EXCEEDED, not the driver's cancel", async () => {
    const { pool, db } = await open(pgDriver as DriverModule<unknown>);
    const deadlined = new Kysely<Database>({ dialect: new LeasedDialect({ pool, deadlineMs: 800 }) });
    try {
      const marker = "pg_sleep(5) /* kysely-query-deadline */";
      const error = await sql
        .raw(`SELECT ${marker}`)
        .execute(deadlined)
        .catch((e: unknown) => e);
      expect(codeOf(error)).toBe("DEADLINE_EXCEEDED");
      await s.sampler.until((x) => x.local > Date.now() - 1 && !x.backends.some((b) => b.query.includes(marker)), 3000);
      await expect.poll(async () => (await pool.operator!.stats()).held, { timeout: 3000 }).toBe(0);
    } finally {
      await deadlined.destroy();
      await db.destroy();
      await pool.close();
    }
  });

  it("cancels a transaction's statement at the deadline, answers DEADLINE_EXCEEDED, and its backend is gone", async () => {
    const { pool, db } = await open(postgresDriver as DriverModule<postgres.Sql>);
    const deadlined = new Kysely<Database>({ dialect: new LeasedDialect({ pool, deadlineMs: 800 }) });
    try {
      const marker = "pg_sleep(5) /* kysely-deadline */";
      const started = Date.now();
      const error = await deadlined
        .transaction()
        .execute(async (trx) => {
          await sql.raw(`SELECT ${marker}`).execute(trx);
        })
        .catch((e: unknown) => e);
      expect(codeOf(error)).toBe("DEADLINE_EXCEEDED");
      expect(Date.now() - started).toBeLessThan(4000);
      // The database, not the ledger: no backend of the role runs the statement any more.
      await s.sampler.until((x) => x.local > Date.now() - 1 && !x.backends.some((b) => b.query.includes(marker)), 3000);
      await expect.poll(async () => (await pool.operator!.stats()).held, { timeout: 3000 }).toBe(0);
    } finally {
      await deadlined.destroy();
      await db.destroy();
      await pool.close();
    }
  });
});

describe("LeasedDialect under load", () => {
  it("holds 60 concurrent queries to the limit of 3 in pg_stat_activity; every refusal is a 503 with Retry-After", async () => {
    const { pool, db } = await open(pgDriver as DriverModule<unknown>, {
      LEASE_MAX_QUEUE: "20",
      LEASE_WAIT_MS: "1500",
    });
    try {
      const peakBefore = s.sampler.samples.length;
      const outcomes = await Promise.all(
        Array.from({ length: 60 }, () =>
          sql`SELECT pg_sleep(0.05) AS slept`.execute(db).then(
            () => ({ ok: true as const }),
            (error: unknown) => ({ ok: false as const, error }),
          ),
        ),
      );
      await sleep(50);
      const samples = s.sampler.samples.slice(peakBefore);
      const peak = Math.max(0, ...samples.map((x) => x.backends.length));
      const failures = outcomes.filter((o) => !o.ok).map((o) => (o as { error: unknown }).error);
      const ok = outcomes.filter((o) => o.ok).length;
      console.log(`[orm] kysely 60 concurrent at limit 3: ${ok} ok, ${failures.length} refused; peak ${peak} backends`);
      expect(peak).toBeLessThanOrEqual(3);
      expect(peak).toBeGreaterThan(0);
      expect(ok).toBeGreaterThan(0);
      expect(failures.some(isTooMany)).toBe(false);
      for (const error of failures) {
        expect(["QUEUE_FULL", "ACQUIRE_TIMEOUT"]).toContain(codeOf(error));
        const response = errorResponse(error);
        expect(response.status).toBe(503);
        expect(Number(response.headers.get("retry-after"))).toBeGreaterThan(0);
      }
    } finally {
      await db.destroy();
      await pool.close();
    }
  }, 30_000);
});
