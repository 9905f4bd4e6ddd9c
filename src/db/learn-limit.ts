import type { Sql, TransactionSql } from "postgres";
import type { RoomCounts, RoomReading } from "../core/index.ts";
import type { Connection } from "./driver.ts";
import { toDatabaseError } from "./errors.ts";

const ROOM_TERMS = `
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int AS superuser_reserved,
           current_setting('reserved_connections', true)::int AS reserved,
           (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user)::int AS role_limit,
           (SELECT datconnlimit FROM pg_database WHERE datname = current_database())::int AS database_limit,
           count(*)::int AS others_on_server,
           count(*) FILTER (WHERE a.usename = current_user)::int AS others_of_role,
           count(*) FILTER (WHERE a.datname = current_database())::int AS others_in_database
    FROM pg_stat_activity a
    WHERE (a.backend_type = 'client backend' OR (a.backend_type IS NULL AND a.datid IS NOT NULL AND a.usesysid IS NOT NULL))
      AND NOT (coalesce(a.application_name, '') = $1
               OR left(coalesce(a.application_name, ''), length($1) + 1) = $1 || '/')`;

interface TermsRow {
  max_connections: number;
  superuser_reserved: number;
  reserved: number | null;
  role_limit: number | null;
  database_limit: number | null;
  others_on_server: number;
  others_of_role: number;
  others_in_database: number;
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
 * @example
 * const counts = await readRoomCounts(sql, "my-app");
 * const learned = learnedLimit(withCaps(counts, settings), Date.now());
 */
export async function readRoomCounts(
  db: Sql | TransactionSql | Pick<Connection, "query">,
  applicationName: string,
): Promise<RoomCounts> {
  const params = [applicationName];
  const [r] =
    "unsafe" in db
      ? ((await db.unsafe(ROOM_TERMS, params)) as unknown as TermsRow[])
      : await db.query<TermsRow>(ROOM_TERMS, params);
  return {
    maxConnections: r!.max_connections,
    superuserReserved: r!.superuser_reserved,
    reserved: r!.reserved,
    roleLimit: r!.role_limit,
    databaseLimit: r!.database_limit,
    othersOnServer: r!.others_on_server,
    othersOfRole: r!.others_of_role,
    othersInDatabase: r!.others_in_database,
  };
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
