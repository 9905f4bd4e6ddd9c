import type { Sql } from "postgres";
import type { ConnectionCounts } from "../core/index.ts";

/**
 * Reads the database's own count of the role's client connections in one short query: all of
 * them on the server (a role's `CONNECTION LIMIT` is server-wide) and those that carry the
 * application's `application_name`. The observer's own connection is left out.
 *
 * @example
 * const sql = connectFromWorker(env.HYPERDRIVE.connectionString, "leasegate-reconcile");
 * try { counts = await countConnections(sql, "my-app"); } finally { await closeConnection(sql); }
 */
export async function countConnections(sql: Sql, applicationName: string): Promise<ConnectionCounts> {
  const [row] = await sql<Array<{ role: string; role_connections: number; app_connections: number }>>`
    SELECT current_user::text AS role,
           count(*)::int AS role_connections,
           count(*) FILTER (WHERE application_name = ${applicationName})::int AS app_connections
    FROM pg_stat_activity
    WHERE usename = current_user AND backend_type = 'client backend' AND pid <> pg_backend_pid()`;
  return {
    role: row!.role,
    applicationName,
    roleConnections: row!.role_connections,
    appConnections: row!.app_connections,
  };
}
