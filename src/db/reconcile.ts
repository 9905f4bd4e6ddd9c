import type { Sql } from "postgres";
import type { ConnectionCounts } from "../core/index.ts";
import type { Connection } from "./driver.ts";

const COUNT_CONNECTIONS = `
    SELECT current_user::text AS role,
           count(*)::int AS role_connections,
           count(*) FILTER (WHERE application_name = $1
                              OR left(application_name, length($1) + 1) = $1 || '/')::int AS app_connections
    FROM pg_stat_activity
    WHERE usename = current_user AND backend_type = 'client backend' AND pid <> pg_backend_pid()
      AND ($2 = 'none' OR state IS DISTINCT FROM 'idle')`;

/**
 * Reads the database's own count of the role's client connections in one short query: all of
 * them on the server (a role's `CONNECTION LIMIT` is server-wide) and those that carry the
 * application's `application_name`, or that name tagged with a lease (`${name}/${leaseId8}`,
 * `LEASE_ENFORCE=terminate`). The observer's own connection is left out. Runs on a
 * postgres.js `Sql` or on any driver's connection. Behind a transaction-mode pooler (`pooler`
 * `transaction`, `DB_POOLER`) only connections in a transaction are counted: an idle server
 * connection is the pooler's, held for no client, and a busy one runs one leased transaction.
 *
 * @example
 * const conn = await driver.connect(target);
 * try { counts = await countConnections(conn, "my-app"); } finally { await conn.close(); }
 */
export async function countConnections(
  db: Sql | Pick<Connection, "query">,
  applicationName: string,
  pooler: "none" | "transaction" = "none",
): Promise<ConnectionCounts> {
  type Counted = { role: string; role_connections: number; app_connections: number };
  const params = [applicationName, pooler];
  const [row] =
    "unsafe" in db
      ? ((await db.unsafe(COUNT_CONNECTIONS, params)) as unknown as Counted[])
      : await db.query<Counted>(COUNT_CONNECTIONS, params);
  return {
    role: row!.role,
    applicationName,
    roleConnections: row!.role_connections,
    appConnections: row!.app_connections,
  };
}
