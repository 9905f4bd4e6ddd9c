/**
 * Operator controls of a Worker's pool: one coordinator object, or every shard of a split pool
 * (pause and resume all, a new limit split like LEASE_LIMIT, revoke where the lease is held,
 * stats summed), plus the reconciliation against `pg_stat_activity`.
 */
import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { mergeStats } from "../client/sharded-leases.ts";
import {
  type ConnectionCounts,
  type ControlResult,
  type EnforceSettings,
  type PoolStats,
  type Reconciliation,
  compareConnections,
  expected,
  shardLimits,
} from "../core/index.ts";
import type { Connection } from "../db/driver.ts";
import { enforceLedger } from "../db/enforce.ts";
import { toDatabaseError } from "../db/errors.ts";
import { countConnections } from "../db/reconcile.ts";
import { type OperatorControls, controlsOf } from "../http/operator.ts";

type Stub = DurableObjectStub<ConnectionCoordinator>;

/** `application_name` of the reconciliation's own connection (it never counts itself). */
const OBSERVER_APPLICATION_NAME = "leasegate-reconcile";

/** How the reconciliation reaches `pg_stat_activity` (the pool's driver), and the application name it counts. */
export interface ReconcileTarget {
  /** Opens one connection outside any lease, named `applicationName`. */
  connect(applicationName: string): Promise<Connection>;
  applicationName: string;
  /** `LEASE_ENFORCE=terminate`: also terminate tagged backends whose lease is no longer held. */
  enforce?: EnforceSettings | null | undefined;
  /** `DB_POOLER`: behind a transaction-mode pooler only connections in a transaction are counted. */
  pooler?: "none" | "transaction" | undefined;
}

/**
 * Reads `pg_stat_activity` through one short-lived connection outside any lease (an observer must
 * not wait behind the pool it observes). With enforcement on, it then terminates the application's
 * tagged backends whose lease none of `ledger`'s objects holds: the object cannot reach the
 * database, so for Workers this is the only enforcement. The counts are those seen before.
 */
async function observe(
  target: ReconcileTarget,
  ledger: () => Promise<readonly PoolStats[]>,
): Promise<ConnectionCounts> {
  let conn: Connection | undefined;
  try {
    // The held leases first: a lease granted after this read opens a connection younger than the grace period.
    const held = target.enforce ? await ledger() : undefined;
    conn = await target.connect(OBSERVER_APPLICATION_NAME);
    const counts = await countConnections(conn, target.applicationName, target.pooler);
    if (!target.enforce || !held) return counts;
    return { ...counts, terminated: await enforceLedger(conn, target.applicationName, held, target.enforce.graceMs) };
  } catch (error) {
    throw toDatabaseError(error);
  } finally {
    await conn?.close();
  }
}

/**
 * The controls of one coordinator object.
 *
 * @example
 * const controls = coordinatorControls(stub, { connect: (name) => driver.connect({ ...target, applicationName: name }), applicationName: "my-app" });
 */
export function coordinatorControls(coordinator: Stub, target: ReconcileTarget): OperatorControls {
  return controlsOf(coordinator, () => observe(target, async () => [await coordinator.stats()]));
}

/** Every shard's control answer as one: paused if any is, limits summed. */
async function all(stubs: Stub[], fn: (s: Stub, i: number) => Promise<ControlResult>): Promise<ControlResult> {
  const results = await Promise.all(stubs.map(fn));
  const failed = results.find((r) => !r.ok);
  if (failed) return failed;
  const ok = results as Array<Extract<ControlResult, { ok: true }>>;
  const overrides = ok.map((r) => r.limitOverride);
  return {
    ok: true,
    paused: ok.some((r) => r.paused),
    limit: ok.reduce((a, r) => a + r.limit, 0),
    limitOverride: overrides.every((o) => o === null) ? null : ok.reduce((a, r) => a + (r.limitOverride ?? r.limit), 0),
  };
}

/**
 * The controls of a pool split across shard objects. The reconciliation compares the summed held
 * leases and is kept in this isolate, not in the objects.
 *
 * @example
 * const controls = shardedControls(stubs, target);
 */
export function shardedControls(stubs: Stub[], target: ReconcileTarget): OperatorControls {
  const count = stubs.length;
  let last: Reconciliation | null = null;
  return {
    stats: async () => {
      const list = await Promise.all(stubs.map((s, index) => s.operatorStats({ index, count })));
      const merged = mergeStats(list);
      const overridden = list.some((s) => s.limitOverride !== null);
      return { ...merged, limitOverride: overridden ? merged.limit : null, reconciliation: last };
    },
    pause: () => all(stubs, (s) => s.pause()),
    resume: () => all(stubs, (s) => s.resume()),
    setLimit: async (limit) => {
      if (limit !== null && (!Number.isInteger(limit) || limit < count)) {
        return {
          ok: false,
          code: "INVALID_ARGUMENT",
          message: expected("limit", `an integer of at least ${count} (one slot per shard)`, limit),
        };
      }
      const parts = limit === null ? null : shardLimits(limit, count);
      return all(stubs, (s, i) => s.setLimit(parts === null ? null : parts[i]!));
    },
    revoke: async (id) => {
      const results = await Promise.all(stubs.map((s) => s.revoke(id)));
      return results.find((r) => r.ok) ?? results[0]!;
    },
    reconcile: async () => {
      const ledger = () => Promise.all(stubs.map((s, index) => s.stats({ index, count })));
      const counts = await observe(target, ledger);
      const merged = mergeStats(await ledger());
      last = compareConnections({ held: merged.held, limit: merged.limit }, counts, Date.now());
      return last;
    },
  };
}
