/**
 * Rows ↔ state for the local adapter: a transition loads its pool under the pool's advisory lock
 * as one core state (lease rows, waiter rows in queue order, the snapshot) and writes back only
 * the difference, in one statement.
 */
import type { Sql, TransactionSql } from "postgres";
import {
  type Lease,
  type PoolConfig,
  type PoolSnapshot,
  type PoolState,
  type Priority,
  type Reconciliation,
  type Waiter,
  LeaseError,
  restore,
  snapshot,
} from "../src/core/index.ts";

/** The pool as loaded inside a transition, plus what is needed to write back only the difference. */
export interface Loaded {
  state: PoolState;
  /** The limit from the pool's row (the last started process's config), before any override. */
  configured: number;
  reconciliation: Reconciliation | null;
  leasesBefore: Map<string, number>;
  queueBefore: Set<string>;
  /** Waiters whose process's LISTEN connection is gone: nobody would ever take their grant. */
  dead: string[];
}

type LeaseRow = [id: string, fence: number, holder: string, grantedAt: number, expiresAt: number, priority: Priority | null];
type WaiterRow = [string, string, number, number, number, alive: boolean, Priority | null, string | null, claimMs: number | null];

function leaseOf([id, fence, holder, grantedAt, expiresAt, priority]: LeaseRow): Lease {
  return priority === null ? { id, fence, holder, grantedAt, expiresAt } : { id, fence, holder, grantedAt, expiresAt, priority };
}

function waiterOf([leaseId, holder, enqueuedAt, deadline, ttlMs, , priority, tenant, claimMs]: WaiterRow): Waiter {
  const w: { -readonly [K in keyof Waiter]: Waiter[K] } = { leaseId, holder, enqueuedAt, deadline, ttlMs };
  if (claimMs !== null && claimMs !== undefined) w.claimMs = claimMs;
  if (priority !== null) w.priority = priority;
  if (tenant !== null) w.tenant = tenant;
  return w;
}

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
        (SELECT coalesce(json_agg(json_build_array(id, fence, holder, granted_at, expires_at, priority)), '[]')
           FROM leasegate_leases WHERE pool = p.pool)::text AS leases,
        (SELECT coalesce(json_agg(json_build_array(id, holder, enqueued_at, deadline, ttl_ms,
                   owner_pid IS NULL OR owner_pid = ANY(ARRAY(SELECT pid FROM pg_stat_activity)), priority, tenant, claim_ms) ORDER BY seq), '[]')
           FROM leasegate_waiters WHERE pool = p.pool)::text AS waiters
      FROM leasegate_pools p WHERE p.pool = ${pool}`,
  ]);
  if (!row) throw new LeaseError("INTERNAL", `Pool ${pool} has no row: was the database reset under a running coordinator?`);
  const leases = (JSON.parse(row.leases as string) as LeaseRow[]).map(leaseOf);
  const waiterRows = JSON.parse(row.waiters as string) as WaiterRow[];
  const config = row.config as PoolConfig;
  const state = restore(config, row.snapshot as PoolSnapshot | null, leases, waiterRows.map(waiterOf));
  return {
    state,
    configured: config.limit,
    reconciliation: (row.reconciliation as Reconciliation | null) ?? null,
    leasesBefore: new Map(leases.map((l) => [l.id, l.expiresAt])),
    queueBefore: new Set(state.queue.map((w) => w.leaseId)),
    dead: waiterRows.filter((r) => !r[5]).map((r) => r[0]),
  };
}

/**
 * The statement that brings the tables in line with `loaded.state`: lease and waiter rows that
 * came or went, renewed expiries, the snapshot, and the notices to send on commit. One statement:
 * few messages and one executor start under the lock.
 */
export function writePool(tx: Sql, pool: string, loaded: Loaded, ownerPid: number | null, notify: { channel: string; notices: string[] }) {
  const { state, leasesBefore, queueBefore } = loaded;
  const gone = [...leasesBefore.keys()].filter((id) => !state.leases.has(id));
  const added: unknown[] = [];
  const renewed: unknown[] = [];
  for (const l of state.leases.values()) {
    const before = leasesBefore.get(l.id);
    if (before === undefined) added.push([l.id, l.fence, l.holder, l.grantedAt, l.expiresAt, l.priority ?? null]);
    else if (before !== l.expiresAt) renewed.push([l.id, l.expiresAt]);
  }
  const queued = new Set(state.queue.map((w) => w.leaseId));
  const left = [...queueBefore].filter((id) => !queued.has(id));
  // New waiters in queue order: their sequence numbers are drawn in this order, under the lock.
  const joined = state.queue
    .filter((w) => !queueBefore.has(w.leaseId))
    .map((w) => [w.leaseId, w.holder, w.enqueuedAt, w.deadline, w.ttlMs, ownerPid, w.priority ?? null, w.tenant ?? null, w.claimMs ?? null]);
  return tx`
    WITH
      del_leases AS (
        DELETE FROM leasegate_leases WHERE pool = ${pool}
          AND id IN (SELECT json_array_elements_text(${JSON.stringify(gone)}::text::json))),
      add_leases AS (
        INSERT INTO leasegate_leases (pool, id, fence, holder, granted_at, expires_at, priority)
        SELECT ${pool}, e->>0, (e->>1)::bigint, e->>2, (e->>3)::bigint, (e->>4)::bigint, e->>5
        FROM json_array_elements(${JSON.stringify(added)}::text::json) e),
      renew_leases AS (
        UPDATE leasegate_leases l SET expires_at = (e->>1)::bigint
        FROM json_array_elements(${JSON.stringify(renewed)}::text::json) e
        WHERE l.pool = ${pool} AND l.id = e->>0),
      del_waiters AS (
        DELETE FROM leasegate_waiters WHERE pool = ${pool}
          AND id IN (SELECT json_array_elements_text(${JSON.stringify(left)}::text::json))),
      add_waiters AS (
        INSERT INTO leasegate_waiters (pool, id, holder, enqueued_at, deadline, ttl_ms, owner_pid, priority, tenant, claim_ms)
        SELECT ${pool}, e->>0, e->>1, (e->>2)::bigint, (e->>3)::bigint, (e->>4)::bigint, (e->>5)::integer, e->>6, e->>7, (e->>8)::bigint
        FROM json_array_elements(${JSON.stringify(joined)}::text::json) WITH ORDINALITY AS j(e, n) ORDER BY n),
      pool_row AS (
        UPDATE leasegate_pools SET snapshot = ${JSON.stringify(snapshot(state))}::text::jsonb WHERE pool = ${pool})
    SELECT pg_notify(${notify.channel}, n) FROM json_array_elements_text(${JSON.stringify(notify.notices)}::text::json) n`;
}
