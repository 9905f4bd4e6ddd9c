import type { Sql, TransactionSql } from "postgres";
import { LeaseError, type RoomCounts, type RoomReading } from "../core/index.ts";
import type { Connection } from "./driver.ts";
import { toDatabaseError } from "./errors.ts";

/**
 * The pools that learn their limit on this database, each by its `application_name`, live while
 * they keep learning: a row lives three of its pool's intervals past its last learning. Every
 * learning registers its own pool and splits the room among the live ones.
 */
const LEARNERS = `
    DO $$ BEGIN
      IF to_regclass('leasegate_learners') IS NULL THEN
        CREATE TABLE IF NOT EXISTS leasegate_learners (
          application_name text PRIMARY KEY,
          role name NOT NULL,
          live_until timestamptz NOT NULL
        );
      END IF;
    END $$`;

// $1: the pool's application_name; $2: how long its registration lives, ms.
const ROOM_TERMS = `
    WITH me AS (
           INSERT INTO leasegate_learners (application_name, role, live_until)
           VALUES ($1, current_user, now() + make_interval(secs => $2::int / 1000.0))
           ON CONFLICT (application_name) DO UPDATE SET role = excluded.role, live_until = excluded.live_until),
         live AS (
           SELECT application_name AS name, role FROM leasegate_learners
           WHERE live_until > now() AND application_name <> $1),
         others AS (
           SELECT a.usename, a.datname,
                  EXISTS (SELECT 1 FROM live
                          WHERE a.application_name = live.name
                             OR left(a.application_name, length(live.name) + 1) = live.name || '/') AS learns
           FROM pg_stat_activity a
           WHERE (a.backend_type = 'client backend' OR (a.backend_type IS NULL AND a.datid IS NOT NULL AND a.usesysid IS NOT NULL))
             AND NOT (coalesce(a.application_name, '') = $1
                      OR left(coalesce(a.application_name, ''), length($1) + 1) = $1 || '/'))
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int AS superuser_reserved,
           current_setting('reserved_connections', true)::int AS reserved,
           (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user)::int AS role_limit,
           (SELECT datconnlimit FROM pg_database WHERE datname = current_database())::int AS database_limit,
           count(*)::int AS others_on_server,
           count(*) FILTER (WHERE o.usename = current_user)::int AS others_of_role,
           count(*) FILTER (WHERE o.datname = current_database())::int AS others_in_database,
           (SELECT count(*) FROM live)::int + 1 AS pools,
           (SELECT count(*) FROM live WHERE live.role = current_user)::int + 1 AS pools_of_role,
           count(*) FILTER (WHERE o.learns)::int AS learning_on_server,
           count(*) FILTER (WHERE o.learns AND o.usename = current_user)::int AS learning_of_role,
           count(*) FILTER (WHERE o.learns AND o.datname = current_database())::int AS learning_in_database
    FROM others o`;

interface TermsRow {
  max_connections: number;
  superuser_reserved: number;
  reserved: number | null;
  role_limit: number | null;
  database_limit: number | null;
  others_on_server: number;
  others_of_role: number;
  others_in_database: number;
  pools: number;
  pools_of_role: number;
  learning_on_server: number;
  learning_of_role: number;
  learning_in_database: number;
}

/**
 * Reads the counts of `LEASE_LIMIT=auto` in one short query outside any lease: the server's
 * `max_connections` and reserved slots, the role's and the database's `CONNECTION LIMIT`, and the
 * client connections that are not the application's — on the server, of the role, in the database.
 * The pool's caps (`LEASE_HEADROOM`, `LEASE_LIMIT_MAX`) are not read here: the coordinator adds its
 * own (`withCaps`).
 *
 * The application's connections are those whose `application_name` is `applicationName` (every
 * connection a lease pays for carries it, `APPLICATION_NAME`, by default one name per pool), or
 * that name tagged with a lease (`${applicationName}/${leaseId8}`, `LEASE_ENFORCE=terminate`).
 * Everything else is room taken: other clients — another pool's connections too — and leasegate's
 * own connections that no lease pays for (the local adapter's control and LISTEN connections, and
 * the connection this query runs on, which is not left out).
 *
 * Runs on a postgres.js `Sql` or on any driver's connection. A role without `pg_read_all_stats` sees other roles' sessions with `backend_type` NULL; those are
 * counted as client connections when they have a database and a user (a client backend always
 * does): a background worker of another role may count too, which errs on the safe side.
 *
 * Registers the pool as one that learns (`leasegate_learners`, created when missing) for three
 * of its intervals, and counts the live ones and their connections: the coordinator splits the
 * room among them (`pools`), so two pools with `LEASE_LIMIT=auto` never both spend the same room.
 *
 * @example
 * const counts = await readRoomCounts(sql, "my-app", 10_000);
 * const learned = learnedLimit(withCaps(counts, settings), Date.now());
 */
export async function readRoomCounts(
  db: Sql | TransactionSql | Pick<Connection, "query">,
  applicationName: string,
  intervalMs: number,
): Promise<RoomCounts> {
  // Three intervals: a pool that missed a learning or two is still there; one gone for good
  // leaves the split within half a minute at the default interval.
  const params = [applicationName, Math.min(3 * intervalMs, 86_400_000)];
  const [r] = await (async () => {
    if ("unsafe" in db) {
      await db.unsafe(LEARNERS);
      return (await db.unsafe(ROOM_TERMS, params)) as unknown as TermsRow[];
    }
    await db.query(LEARNERS);
    return await db.query<TermsRow>(ROOM_TERMS, params);
  })().catch((error: unknown) => Promise.reject(learnersRefused(error)));
  return {
    maxConnections: r!.max_connections,
    superuserReserved: r!.superuser_reserved,
    reserved: r!.reserved,
    roleLimit: r!.role_limit,
    databaseLimit: r!.database_limit,
    othersOnServer: r!.others_on_server,
    othersOfRole: r!.others_of_role,
    othersInDatabase: r!.others_in_database,
    pools: r!.pools,
    poolsOfRole: r!.pools_of_role,
    learningOnServer: r!.learning_on_server,
    learningOfRole: r!.learning_of_role,
    learningInDatabase: r!.learning_in_database,
  };
}

/**
 * A permission error on `leasegate_learners` (the table is created when missing) as what to do
 * about it: `INVALID_CONFIG` naming the statement and the grant; any other error as it is.
 */
function learnersRefused(error: unknown): unknown {
  if ((error as { code?: unknown }).code !== "42501") return error;
  return new LeaseError(
    "INVALID_CONFIG",
    "LEASE_LIMIT=auto needs the table leasegate_learners, which this role may not create or write: run `CREATE TABLE leasegate_learners (application_name text PRIMARY KEY, role name NOT NULL, live_until timestamptz NOT NULL)` as a role that may, and `GRANT SELECT, INSERT, UPDATE ON leasegate_learners TO` this role",
  );
}

/**
 * Creates `leasegate_learners` with `db` (a role that may create tables), for the roles of
 * pools that learn and may not.
 *
 * @example
 * await createLearners(adminSql);
 */
export async function createLearners(db: Sql | TransactionSql): Promise<void> {
  await db.unsafe(LEARNERS);
}

/**
 * One reading for `learnLimit`: the counts `read` answers, or its failure as a database error's
 * code and message (the coordinator keeps it for operators; the limit stays).
 *
 * @example
 * await coordinator.learnLimit(await roomReading(() => readRoomCounts(sql, "my-app")));
 */
export async function roomReading(read: () => Promise<RoomCounts>): Promise<RoomReading> {
  try {
    return { ok: true, counts: await read() };
  } catch (error) {
    const e = toDatabaseError(error);
    return { ok: false, code: e.code, message: e.message };
  }
}
