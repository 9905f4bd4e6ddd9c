/**
 * Rows ↔ state for the local adapter: a transition loads its pool under the pool's advisory lock
 * as one core state (lease rows, waiter rows in queue order, the snapshot) and writes back only
 * the difference, in one statement. Which columns a row has, and in what order they travel as
 * JSON, comes from the field lists (`fields.ts`): nothing here names a field by position.
 */
import type { Sql, TransactionSql } from "postgres";
import {
  type Lease,
  type PoolConfig,
  type PoolSnapshot,
  type PoolState,
  type Reconciliation,
  type Waiter,
  LeaseError,
  restore,
  snapshot,
} from "../src/core/index.ts";
import { LEASE_FIELDS, WAITER_FIELDS, codec } from "./fields.ts";

/** The pool as loaded inside a transition, plus what is needed to write back only the difference. */
export interface Loaded {
  state: PoolState;
  /** The limit from the pool's row (the last started process's config), before any override. */
  configured: number;
  reconciliation: Reconciliation | null;
  /** Each lease's mutable fields as loaded: a lease whose differ after the steps is written back. */
  leasesBefore: Map<string, unknown[]>;
  queueBefore: Set<string>;
  /** Waiters whose process's LISTEN connection is gone: nobody would ever take their grant. */
  dead: string[];
}

const leaseRows = codec<Lease>(LEASE_FIELDS);
const waiterRows = codec<Waiter>(WAITER_FIELDS);
/** The fields a step may change on a held lease (a renewal moves `expiresAt`). */
const MUTABLE = LEASE_FIELDS.filter((f) => "mutable" in f && f.mutable);
/** A changed lease travels as its id (to find its row) and then its mutable fields. */
const leaseChanges = codec<Lease>([LEASE_FIELDS.find((f) => f.key === "id")!, ...MUTABLE]);
const mutableOf = (lease: Lease) => MUTABLE.map((f) => lease[f.key]);

/** A waiter row as read: its fields, and whether the process it waits in is still alive. */
type WaiterRow = [fields: unknown[], alive: boolean];

// The statements' variable parts, built once from the field lists.
const LEASE_JSON = `coalesce(json_agg(${leaseRows.jsonArray}), '[]')`;
// A waiter whose process's LISTEN connection is gone from pg_stat_activity is dead.
const WAITER_JSON = `coalesce(json_agg(json_build_array(${waiterRows.jsonArray},
  owner_pid IS NULL OR owner_pid = ANY(ARRAY(SELECT pid FROM pg_stat_activity))) ORDER BY seq), '[]')`;
const INSERT_LEASES = `INSERT INTO leasegate_leases (pool, ${leaseRows.columns})`;
const LEASE_VALUES = leaseRows.fromJson("e").join(", ");
const [CHANGED_ID = "", ...CHANGED_VALUES] = leaseChanges.fromJson("e");
const LEASE_CHANGES = MUTABLE.map((f, i) => `${f.column} = ${CHANGED_VALUES[i]}`).join(", ");
const INSERT_WAITERS = `INSERT INTO leasegate_waiters (pool, ${waiterRows.columns}, owner_pid)`;
// A joined waiter travels as [fields, owner_pid].
const WAITER_VALUES = [...waiterRows.fromJson("(e->0)"), "(e->>1)::integer"].join(", ");

/**
 * Loads `pool` under its advisory lock, which the open transaction holds until it ends. With
 * `begin`, the BEGIN goes in the same round trip (on a reserved connection).
 */
export async function loadPool(tx: Sql | TransactionSql, pool: string, begin = false): Promise<Loaded> {
  // One round trip: postgres.js pipelines queries issued together on one connection. The read
  // is its own statement after the lock's, so its snapshot sees every earlier transition.
  const [, , [row]] = await Promise.all([
    begin ? tx`BEGIN` : tx`SELECT 1`,
    tx`SELECT pg_advisory_xact_lock(hashtext(${pool}))`,
    tx`
      SELECT p.config, p.snapshot, p.reconciliation,
        (SELECT ${tx.unsafe(LEASE_JSON)} FROM leasegate_leases WHERE pool = p.pool)::text AS leases,
        (SELECT ${tx.unsafe(WAITER_JSON)} FROM leasegate_waiters WHERE pool = p.pool)::text AS waiters
      FROM leasegate_pools p WHERE p.pool = ${pool}`,
  ]);
  if (!row)
    throw new LeaseError("INTERNAL", `Pool ${pool} has no row: was the database reset under a running coordinator?`);
  const leases = (JSON.parse(row.leases as string) as unknown[][]).map(leaseRows.decode);
  const dead: string[] = [];
  const waiters = (JSON.parse(row.waiters as string) as WaiterRow[]).map(([fields, alive]) => {
    const w = waiterRows.decode(fields);
    if (!alive) dead.push(w.leaseId);
    return w;
  });
  const config = row.config as PoolConfig;
  const state = restore(config, row.snapshot as PoolSnapshot | null, leases, waiters);
  return {
    state,
    configured: config.limit,
    reconciliation: (row.reconciliation as Reconciliation | null) ?? null,
    leasesBefore: new Map(leases.map((l) => [l.id, mutableOf(l)])),
    queueBefore: new Set(state.queue.map((w) => w.leaseId)),
    dead,
  };
}

/**
 * The statement that brings the tables in line with `loaded.state`: lease and waiter rows that
 * came or went, renewed expiries, the snapshot, and the notices to send on commit. One statement:
 * few messages and one executor start under the lock.
 */
export function writePool(
  tx: Sql,
  pool: string,
  loaded: Loaded,
  ownerPid: number | null,
  notify: { channel: string; notices: string[] },
) {
  const { state, leasesBefore, queueBefore } = loaded;
  const gone = [...leasesBefore.keys()].filter((id) => !state.leases.has(id));
  const added: unknown[] = [];
  const renewed: unknown[] = [];
  for (const l of state.leases.values()) {
    const before = leasesBefore.get(l.id);
    if (before === undefined) added.push(leaseRows.encode(l));
    else if (MUTABLE.some((f, i) => l[f.key] !== before[i])) renewed.push(leaseChanges.encode(l));
  }
  const queued = new Set(state.queue.map((w) => w.leaseId));
  const left = [...queueBefore].filter((id) => !queued.has(id));
  // New waiters in queue order: their sequence numbers are drawn in this order, under the lock.
  const joined = state.queue.filter((w) => !queueBefore.has(w.leaseId)).map((w) => [waiterRows.encode(w), ownerPid]);
  return tx`
    WITH
      del_leases AS (
        DELETE FROM leasegate_leases WHERE pool = ${pool}
          AND id IN (SELECT json_array_elements_text(${JSON.stringify(gone)}::text::json))),
      add_leases AS (
        ${tx.unsafe(INSERT_LEASES)}
        SELECT ${pool}, ${tx.unsafe(LEASE_VALUES)}
        FROM json_array_elements(${JSON.stringify(added)}::text::json) e),
      renew_leases AS (
        UPDATE leasegate_leases l SET ${tx.unsafe(LEASE_CHANGES)}
        FROM json_array_elements(${JSON.stringify(renewed)}::text::json) e
        WHERE l.pool = ${pool} AND l.id = ${tx.unsafe(CHANGED_ID)}),
      del_waiters AS (
        DELETE FROM leasegate_waiters WHERE pool = ${pool}
          AND id IN (SELECT json_array_elements_text(${JSON.stringify(left)}::text::json))),
      add_waiters AS (
        ${tx.unsafe(INSERT_WAITERS)}
        SELECT ${pool}, ${tx.unsafe(WAITER_VALUES)}
        FROM json_array_elements(${JSON.stringify(joined)}::text::json) WITH ORDINALITY AS j(e, n) ORDER BY n),
      pool_row AS (
        UPDATE leasegate_pools SET snapshot = ${JSON.stringify(snapshot(state))}::text::jsonb WHERE pool = ${pool})
    SELECT pg_notify(${notify.channel}, n) FROM json_array_elements_text(${JSON.stringify(notify.notices)}::text::json) n`;
}
