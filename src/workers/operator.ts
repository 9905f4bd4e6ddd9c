/**
 * Operator controls of a Worker's pool: one coordinator object, or every object of a sharded pool
 * (pause and resume all, a new limit to the root, revoke where the lease is held, stats merged),
 * plus the reconciliation against `pg_stat_activity`.
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

/** Every object's control answer as one (the root's last): paused if any is, the limit the root's. */
async function all(stubs: Stub[], fn: (s: Stub) => Promise<ControlResult>): Promise<ControlResult> {
  const results = await Promise.all(stubs.map(fn));
  const failed = results.find((r) => !r.ok);
  if (failed) return failed;
  const ok = results as Array<Extract<ControlResult, { ok: true }>>;
  const root = ok[ok.length - 1]!;
  return { ok: true, paused: ok.some((r) => r.paused), limit: root.limit, limitOverride: root.limitOverride };
}

/**
 * The controls of a pool split across shard objects, whose root (the object named after the
 * pool) owns the global limit and shares it by demand: stats merge every shard's and the root's
 * (the root's carry each shard's share and demand), a new limit goes to the root (shares follow
 * within a report), pause, resume and revoke go to every object. The reconciliation compares the
 * summed held leases and is kept in this isolate, not in the objects.
 *
 * @example
 * const controls = shardedControls(stubs, rootStub, target, "main");
 */
export function shardedControls(stubs: Stub[], root: Stub, target: ReconcileTarget, pool?: string): OperatorControls {
  const everyone = [...stubs, root];
  let last: Reconciliation | null = null;
  return {
    stats: async () => {
      const list = await Promise.all(everyone.map((s) => s.operatorStats()));
      const own = list[list.length - 1]!;
      return {
        ...own,
        ...mergeStats(list),
        limitOverride: own.limitOverride,
        reconciliation: last,
      };
    },
    pause: () => all(everyone, (s) => s.pause()),
    resume: () => all(everyone, (s) => s.resume()),
    setLimit: (limit) => root.setLimit(limit),
    setLayout: (layout) => root.setLayout(layout, pool),
    revoke: async (id) => {
      const results = await Promise.all(everyone.map((s) => s.revoke(id)));
      return results.find((r) => r.ok) ?? results[0]!;
    },
    reconcile: async () => {
      const ledger = () => Promise.all(everyone.map((s) => s.stats()));
      const counts = await observe(target, ledger);
      const merged = mergeStats(await ledger());
      last = compareConnections({ held: merged.held, limit: merged.limit }, counts, Date.now());
      return last;
    },
  };
}
