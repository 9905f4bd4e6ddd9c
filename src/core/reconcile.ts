/**
 * Reconciliation: what the coordinator believes (leases held) against what the database sees
 * (connections in `pg_stat_activity`). Pure: the shell runs the query and passes the counts.
 */
import type { LearnFailure, LearnedLimit, LimitSource } from "./room.ts";
import type { PoolStats } from "./types.ts";

/** Connection counts read from `pg_stat_activity` by one short query outside any lease. */
export interface ConnectionCounts {
  /** The role the application connects as (`usename`). */
  readonly role: string;
  /** `application_name` of the application's own connections. */
  readonly applicationName: string;
  /** Client connections of the role on the whole server, any application (the observer excluded). */
  readonly roleConnections: number;
  /** Those of them that carry the application's `application_name` (tagged with a lease or not). */
  readonly appConnections: number;
  /**
   * `LEASE_ENFORCE=terminate`: the application's backends tagged with a lease no longer held (past
   * the grace period) that this reconciliation terminated; absent when enforcement is off.
   */
  readonly terminated?: number | undefined;
}

export type ReconcileStatus = "ok" | "drift" | "over_limit";

export interface Reconciliation extends ConnectionCounts {
  /** When the counts were read, ms since the epoch. */
  readonly checkedAt: number;
  readonly held: number;
  readonly limit: number;
  /**
   * `appConnections - held`. Positive: connections that bypass the coordinator (or outlive their
   * lease); negative: leases held with no connection open (a stuck or slow holder). One snapshot
   * races with requests in flight, so a small drift that comes and goes is normal; a lasting one is not.
   */
  readonly drift: number;
  /** The role holds more connections than the pool's limit: someone else uses the database. */
  readonly overLimit: boolean;
  /** `over_limit` wins over `drift`; `ok` when the counts agree and stay within the limit. */
  readonly status: ReconcileStatus;
}

/**
 * Compares the coordinator's view with the database's at time `now`.
 *
 * @example
 * compareConnections({ held: 3, limit: 10 }, { role: "app", applicationName: "web",
 *   roleConnections: 12, appConnections: 5 }, now)
 * // → { drift: 2, overLimit: true, status: "over_limit", … }
 */
export function compareConnections(
  pool: { readonly held: number; readonly limit: number },
  counts: ConnectionCounts,
  now: number,
): Reconciliation {
  const drift = counts.appConnections - pool.held;
  const overLimit = counts.roleConnections > pool.limit;
  return {
    checkedAt: now,
    role: counts.role,
    applicationName: counts.applicationName,
    roleConnections: counts.roleConnections,
    appConnections: counts.appConnections,
    ...(counts.terminated !== undefined && { terminated: counts.terminated }),
    held: pool.held,
    limit: pool.limit,
    drift,
    overLimit,
    status: overLimit ? "over_limit" : drift !== 0 ? "drift" : "ok",
  };
}

/** What operators see: the pool's stats, the live limit override and the last reconciliation. */
export interface OperatorStats extends PoolStats {
  /** The limit set by an operator, or null when `LEASE_LIMIT` applies. */
  limitOverride: number | null;
  reconciliation: Reconciliation | null;
  /** Where `limit` comes from: `LEASE_LIMIT`, the last learning (`LEASE_LIMIT=auto`), or an operator. */
  limitSource?: LimitSource | undefined;
  /** The last learning with its terms (`LEASE_LIMIT=auto`), or null before the first one. */
  learned?: LearnedLimit | null | undefined;
  /** How old `learned` is, ms (`LEASE_LIMIT=auto`); null before the first learning. */
  learnedAgeMs?: number | null | undefined;
  /** The last learning that failed after the last one that worked (the limit stays), or null. */
  learnFailure?: LearnFailure | null | undefined;
}
