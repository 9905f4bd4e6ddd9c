import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { LEASE_FIELDS, WAITER_FIELDS } from "../../local/fields.ts";
import { deliver, noticesOf } from "../../local/notify.ts";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { loadPool } from "../../local/rows.ts";
import { type Effects, type Lease, type PoolConfig, type Waiter, createPool } from "../../src/core/index.ts";
import { Waiters, settlementsOf } from "../../src/engine/index.ts";
import { url } from "./helpers.ts";

/**
 * The stored formats are built from the field lists (`local/fields.ts`): these tests read the
 * lists too, so a field added there is checked here with no edit — its column in a fresh table,
 * its column added to an older one, its value written and read back.
 */
const CONFIG: PoolConfig = { limit: 2, maxQueue: 10, waitMs: 10_000, leaseTtlMs: 30_000 };
const clients: postgres.Sql[] = [];

afterAll(async () => {
  for (const c of clients) await c.end();
});

/** A client whose tables live in a schema of its own (dropped first), as another database's would. */
async function privateSchema(name: string): Promise<{ sql: postgres.Sql; drop: () => Promise<void> }> {
  const schema = `lg_${name}_${process.pid}`;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  clients.push(admin);
  await admin.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema}`);
  const sql = postgres(url, { max: 3, onnotice: () => {}, connection: { search_path: schema } });
  clients.push(sql);
  return { sql, drop: () => admin.unsafe(`DROP SCHEMA ${schema} CASCADE`).then(() => {}) };
}

async function columnsOf(sql: postgres.Sql, table: string): Promise<Map<string, { type: string; nullable: boolean }>> {
  const rows = await sql<{ column_name: string; data_type: string; is_nullable: string }[]>`
    SELECT column_name, data_type, is_nullable FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = ${table}`;
  return new Map(rows.map((r) => [r.column_name, { type: r.data_type, nullable: r.is_nullable === "YES" }]));
}

/** Every field of `fields` in `columns`, with its type and its nullability. */
function expectColumns(
  columns: Map<string, { type: string; nullable: boolean }>,
  fields: ReadonlyArray<{ column: string; type: string; optional?: true }>,
) {
  for (const f of fields) {
    expect(columns.get(f.column), f.column).toEqual({ type: f.type, nullable: f.optional === true });
  }
}

/** The pool as the next transition would load it (leases and waiters decoded from their rows). */
async function loaded(sql: postgres.Sql, pool: string) {
  return await sql.begin((tx) => loadPool(tx, pool));
}

describe("lease and waiter fields declared once", () => {
  it("a fresh table has a column per field, with its type, NOT NULL unless optional", async () => {
    const { sql, drop } = await privateSchema("fresh");
    const c = new PostgresCoordinator({ sql, pool: "fresh", config: CONFIG });
    try {
      await c.ready();
      expectColumns(await columnsOf(sql, "leasegate_leases"), LEASE_FIELDS);
      expectColumns(await columnsOf(sql, "leasegate_waiters"), WAITER_FIELDS);
    } finally {
      await c.close();
      await drop();
    }
  });

  it("tables without the optional columns (an older release) gain them, keep their rows and store every field", async () => {
    const { sql, drop } = await privateSchema("older");
    const first = new PostgresCoordinator({ sql, pool: "older", config: CONFIG });
    await first.ready();
    const held = await first.acquire({ holder: "before-upgrade" });
    await first.close();
    // The tables as a release before every optional field existed: those columns dropped.
    for (const [table, fields] of [
      ["leasegate_leases", LEASE_FIELDS],
      ["leasegate_waiters", WAITER_FIELDS],
    ] as const) {
      for (const f of fields.filter((f) => "optional" in f))
        await sql.unsafe(`ALTER TABLE ${table} DROP COLUMN ${f.column}`);
    }
    expect([...(await columnsOf(sql, "leasegate_leases")).keys()]).not.toContain("priority");
    const c = new PostgresCoordinator({ sql, pool: "older", config: CONFIG });
    try {
      await c.ready();
      expectColumns(await columnsOf(sql, "leasegate_leases"), LEASE_FIELDS);
      expectColumns(await columnsOf(sql, "leasegate_waiters"), WAITER_FIELDS);
      // The row from before the upgrade reads back with its optional fields absent.
      if (!held.ok) throw new Error(held.message);
      const before = await loaded(sql, "older");
      // (What the answer adds, `validForMs` and `queuePosition`, is not stored: it belongs to the call.)
      const { validForMs: _held, queuePosition: _position, ...heldRow } = held.lease;
      expect([...before.state.leases.values()]).toEqual([heldRow]);
      // Every optional field set, on a lease and on a queued waiter, written and read back.
      const critical = await c.acquire({ holder: "critical", priority: "critical" });
      if (!critical.ok) throw new Error(critical.message);
      const waiting = c.acquire({ holder: "waiter", priority: "batch", tenant: "t1", claimMs: 700, waitMs: 5000 });
      await expect.poll(async () => (await c.stats()).waiting).toBe(1);
      const after = await loaded(sql, "older");
      const { validForMs: _critical, queuePosition: _criticalPosition, ...criticalRow } = critical.lease;
      expect(after.state.leases.get(critical.lease.id)).toEqual<Lease>({ ...criticalRow, priority: "critical" });
      expect(after.state.queue).toEqual<Waiter[]>([
        {
          leaseId: expect.any(String) as string,
          holder: "waiter",
          enqueuedAt: expect.any(Number) as number,
          deadline: expect.any(Number) as number,
          ttlMs: CONFIG.leaseTtlMs,
          claimMs: 700,
          priority: "batch",
          tenant: "t1",
        },
      ]);
      // An operator revokes the old lease: the flag is written back (a mutable field) and read
      // again; the waiter waits (two held, limit 2) until the revoked holder releases.
      expect(await c.revoke(held.lease.id)).toMatchObject({ ok: true, revoked: true, holder: "before-upgrade" });
      const revoked = await loaded(sql, "older");
      expect(revoked.state.leases.get(held.lease.id)).toEqual<Lease>({ ...heldRow, revoked: true });
      expect((await c.stats()).waiting).toBe(1);
      expect(await c.release({ leaseId: held.lease.id, fence: held.lease.fence })).toEqual({
        ok: true,
        released: true,
      });
      expect(await waiting).toMatchObject({ ok: true, lease: { holder: "waiter" } });
    } finally {
      await c.close();
      await drop();
    }
  });
});

describe("notices", () => {
  it("answer each parked caller exactly as the transition's own settlements, in payloads Postgres accepts", () => {
    const state = createPool({ ...CONFIG, limit: 1000, maxQueue: 1000 });
    const now = 1_000_000;
    const effects: Effects = { granted: [], timedOut: [], expired: [] };
    for (let i = 0; i < 400; i++) {
      // Holders at their longest: they never travel in a notice (the waiting process knows them).
      const lease: Lease = {
        id: crypto.randomUUID(),
        fence: i + 1,
        holder: "h".repeat(200),
        grantedAt: now,
        expiresAt: now + 500,
        priority: "critical",
      };
      state.leases.set(lease.id, lease);
      effects.granted.push(lease);
      effects.timedOut.push({
        leaseId: crypto.randomUUID(),
        holder: `w${i}`,
        enqueuedAt: now - 300,
        deadline: now,
        ttlMs: 1500,
      });
    }
    const notices = noticesOf(state, effects);
    expect(notices.length).toBeGreaterThan(1);
    for (const n of notices) expect(new TextEncoder().encode(n).length).toBeLessThan(8000);
    const waiters = new Waiters();
    const answers = new Map<string, Promise<unknown>>();
    for (const l of effects.granted) answers.set(l.id, waiters.park(l.id, l.holder, now));
    for (const w of effects.timedOut) answers.set(w.leaseId, waiters.park(w.leaseId, w.holder, now));
    // Lines for callers parked elsewhere are skipped: only half of them wait here.
    for (const [id] of [...answers].filter((_, i) => i % 2 === 1)) waiters.drop(id);
    for (const n of notices) deliver(waiters, n);
    expect(waiters.size).toBe(0);
    const expected = new Map(settlementsOf(state, effects));
    return Promise.all(
      [...answers]
        .filter((_, i) => i % 2 === 0)
        .map(async ([id, answer]) => {
          expect(await answer).toEqual(expected.get(id));
        }),
    );
  });
});
