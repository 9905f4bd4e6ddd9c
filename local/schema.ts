/**
 * The local adapter's tables: created on first use, brought up to date from earlier layouts, and
 * never touched by DDL when current (even a no-op `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes
 * an exclusive lock on its table, which would deadlock against another process's transition
 * holding row locks on the others).
 */
import type { JSONValue, Sql } from "postgres";
import type { PoolConfig } from "../src/core/index.ts";
import { type Field, LEASE_FIELDS, WAITER_FIELDS, columnDefinitions } from "./fields.ts";

/**
 * Columns besides the keys, the pool's config and the fields of a lease or waiter (`fields.ts`):
 * what only the local adapter keeps. All nullable, so an older table gains them by `ADD COLUMN`.
 */
const POOL_COLUMNS = [
  // The core's snapshot of the pool (counters, histogram, fences, paused, limit override …).
  { column: "snapshot", type: "jsonb" },
  { column: "reconciliation", type: "jsonb" },
] as const;
const WAITER_COLUMNS = [
  // The backend pid of the waiting process's LISTEN connection: gone from pg_stat_activity = dead.
  { column: "owner_pid", type: "integer" },
] as const;

const TABLES = `
CREATE TABLE IF NOT EXISTS leasegate_pools (
  pool text PRIMARY KEY,
  config jsonb NOT NULL,
  ${POOL_COLUMNS.map((c) => `${c.column} ${c.type}`).join(",\n  ")}
);
CREATE TABLE IF NOT EXISTS leasegate_leases (
  pool text NOT NULL,
  ${columnDefinitions(LEASE_FIELDS)},
  PRIMARY KEY (pool, id)
);
CREATE TABLE IF NOT EXISTS leasegate_waiters (
  pool text NOT NULL,
  seq bigserial NOT NULL,
  ${columnDefinitions(WAITER_FIELDS)},
  ${WAITER_COLUMNS.map((c) => `${c.column} ${c.type}`).join(",\n  ")},
  PRIMARY KEY (pool, id)
);
CREATE INDEX IF NOT EXISTS leasegate_waiters_order ON leasegate_waiters (pool, seq);
`;

/** Every column a current table has, as `table.column`: one missing means the tables are older. */
const CURRENT_COLUMNS = [
  ...POOL_COLUMNS.map((c) => `leasegate_pools.${c.column}`),
  ...LEASE_FIELDS.map((f) => `leasegate_leases.${f.column}`),
  ...WAITER_FIELDS.map((f) => `leasegate_waiters.${f.column}`),
  ...WAITER_COLUMNS.map((c) => `leasegate_waiters.${c.column}`),
];

const addColumns = (table: string, columns: ReadonlyArray<{ column: string; type: string }>) =>
  columns.map((c) => `ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS ${c.column} ${c.type};`).join("\n");
const optional = <T>(fields: readonly Field<T>[]) => fields.filter((f) => f.optional);

/**
 * Older tables (leasegate 0.1 had a column per pool field, and columns came release by release)
 * gain every optional column they miss, then their pool fields fold into the snapshot.
 */
const UPGRADE = `
${addColumns("leasegate_pools", POOL_COLUMNS)}
${addColumns("leasegate_leases", optional(LEASE_FIELDS))}
${addColumns("leasegate_waiters", [...optional(WAITER_FIELDS), ...WAITER_COLUMNS])}
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'leasegate_pools' AND column_name = 'next_fence') THEN
    ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false;
    ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS limit_override integer;
    ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS adaptive jsonb;
    ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS last_served jsonb NOT NULL DEFAULT '[]';
    ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS serve_seq bigint NOT NULL DEFAULT 0;
    UPDATE leasegate_pools SET snapshot = jsonb_build_object(
      'v', 1, 'nextFence', next_fence, 'counters', counters, 'waits', waits - 'bounds',
      'holdMsSum', hold_ms_sum, 'holdCount', hold_count, 'lastServed', last_served, 'serveSeq', serve_seq,
      'adaptive', adaptive, 'paused', paused, 'limitOverride', limit_override)
    WHERE snapshot IS NULL;
    ALTER TABLE leasegate_pools DROP COLUMN next_fence, DROP COLUMN counters, DROP COLUMN waits,
      DROP COLUMN hold_ms_sum, DROP COLUMN hold_count, DROP COLUMN paused, DROP COLUMN limit_override,
      DROP COLUMN adaptive, DROP COLUMN last_served, DROP COLUMN serve_seq;
  END IF;
END $$;
`;

/** Any fixed number: the key of the advisory lock that serializes schema changes. */
const SCHEMA_LOCK = 7_401_310_001;

/** postgres.js types `sql.json` narrowly; our plain-data objects are JSON by construction. */
const asJson = (value: object): JSONValue => value as JSONValue;

/**
 * Creates or upgrades the tables (once per database; concurrent processes take turns), then writes
 * `config` to the pool's row: the process that started last sets the limits for everyone, as a
 * redeploy with new env vars would. The pool's snapshot is kept.
 *
 * @example
 * await ensureSchema(sql, "main", config);
 */
export async function ensureSchema(sql: Sql, pool: string, config: PoolConfig): Promise<void> {
  const columns = await sql<{ column_name: string }[]>`
    SELECT table_name || '.' || column_name AS column_name FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name IN ('leasegate_pools', 'leasegate_leases', 'leasegate_waiters')`;
  const names = new Set(columns.map((c) => c.column_name));
  const current = CURRENT_COLUMNS.every((c) => names.has(c)) && !names.has("leasegate_pools.next_fence");
  for (let attempt = 1; !current; attempt++) {
    try {
      await sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`;
        await tx.unsafe(TABLES);
        await tx.unsafe(UPGRADE);
      });
      break;
    } catch (error) {
      // An upgrade racing a running transition of another process: the DDL lost; run it again.
      if ((error as { code?: unknown }).code !== "40P01" || attempt >= 3) throw error;
    }
  }
  await sql`
    INSERT INTO leasegate_pools (pool, config) VALUES (${pool}, ${sql.json(asJson(config))})
    ON CONFLICT (pool) DO UPDATE SET config = excluded.config`;
}
