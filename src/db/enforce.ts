/**
 * `LEASE_ENFORCE=terminate`: the limit enforced at the database. Every leased connection carries
 * its lease in `application_name` (`${APPLICATION_NAME}/${leaseId.slice(0, 8)}`, see
 * `SessionLimits.leaseId`), so a backend whose lease has ended can be found and terminated even
 * when its holder cannot stop it (a process frozen past its lease's TTL keeps its socket).
 * Postgres ≥ 14 (`pg_terminate_backend(pid, timeout)` waits for the backend to exit).
 */
import type { Sql, TransactionSql } from "postgres";
import type { PoolStats } from "../core/index.ts";
import type { Connection } from "./driver.ts";

type Db = Sql | TransactionSql | Pick<Connection, "query">;

// How long Postgres waits for each terminated backend to exit, ms: the slot is handed on only
// after its old backend is gone (a backend still exiting counts against CONNECTION LIMIT).
const EXIT_WAIT_MS = 1000;

// A lease's tag is `/` and its id's first 8 characters, after whatever application name the
// holder's process has: processes of one pool may name themselves differently, and the lease id is
// the pool's. 8 characters of a random UUID are 32 random bits: another live lease with the same
// prefix is a chance of about n / 4·10⁹.
const TERMINATE_LEASES = `
    SELECT count(*) FILTER (WHERE gone)::int AS terminated
    FROM (SELECT pg_terminate_backend(a.pid, ${EXIT_WAIT_MS}) AS gone
          FROM pg_stat_activity a
          WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
            AND EXISTS (SELECT 1 FROM unnest(string_to_array($1, ',')) AS t(id)
                        WHERE strpos(a.application_name, '/' || t.id) > 0)) t`;

// The application's tagged backends (its name, `/`, 8 characters) whose lease is not held, older
// than the grace period; of the observer's role only, as the reconciliation counts.
const TERMINATE_UNHELD = `
    SELECT count(*) FILTER (WHERE gone)::int AS terminated
    FROM (SELECT pg_terminate_backend(a.pid, ${EXIT_WAIT_MS}) AS gone
          FROM pg_stat_activity a
          WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.usename = current_user
            AND left(a.application_name, length($1) + 1) = $1 || '/'
            AND NOT (substr(a.application_name, length($1) + 2, 8) = ANY (string_to_array($2, ',')))
            AND a.backend_start < now() - $3::int * interval '1 millisecond') t`;

async function run(db: Db, text: string, params: unknown[]): Promise<number> {
  type Row = { terminated: number };
  const [row] =
    "unsafe" in db
      ? ((await db.unsafe(text, params as never[])) as unknown as Row[])
      : await db.query<Row>(text, params);
  return row?.terminated ?? 0;
}

/**
 * Terminates the backends tagged with any of `leaseIds` (the leases a transition reaps) and waits
 * up to 1 s for each to exit; answers how many exited. Needs the right to signal them (the same
 * role, membership in it, or `pg_signal_backend`): without it the query fails, and the caller
 * decides whether that matters.
 *
 * @example
 * const n = await terminateLeaseBackends(tx, effects.expired.map((l) => l.id));
 */
export async function terminateLeaseBackends(db: Db, leaseIds: readonly string[]): Promise<number> {
  if (leaseIds.length === 0) return 0;
  // Ids are UUIDs: their prefixes hold no comma.
  return run(db, TERMINATE_LEASES, [leaseIds.map((id) => id.slice(0, 8)).join(",")]);
}

/**
 * Reconciliation's enforcement: terminates the role's backends tagged as `applicationName`'s whose
 * lease prefix is not in `heldPrefixes` (`stats().leases[].idPrefix`, read before this) and that
 * started more than `graceMs` ago (a connection opened for a lease granted after the stats were
 * read is younger than that); answers how many exited.
 *
 * @example
 * const terminated = await terminateUnheld(sql, "web", stats.leases.map((l) => l.idPrefix), 3000);
 */
export async function terminateUnheld(
  db: Db,
  applicationName: string,
  heldPrefixes: readonly string[],
  graceMs: number,
): Promise<number> {
  return run(db, TERMINATE_UNHELD, [applicationName, heldPrefixes.join(","), Math.max(0, Math.floor(graceMs))]);
}

/**
 * Reconciliation's enforcement against the coordinator objects' `stats()` (one, or every shard's),
 * read before: {@link terminateUnheld} with the leases they hold. Nothing is terminated while any
 * of them is in its recovery window: it is still recovering its leases from heartbeats, so a live
 * holder's lease may not be listed yet.
 *
 * @example
 * const terminated = await enforceLedger(conn, "web", [await coordinator.stats()], 3000);
 */
export async function enforceLedger(
  db: Db,
  applicationName: string,
  ledger: ReadonlyArray<Pick<PoolStats, "leases" | "recovery">>,
  graceMs: number,
): Promise<number> {
  if (ledger.some((s) => s.recovery !== null)) return 0;
  const prefixes = ledger.flatMap((s) => s.leases.map((l) => l.idPrefix));
  return terminateUnheld(db, applicationName, prefixes, graceMs);
}
