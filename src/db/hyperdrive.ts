import postgres, { type Sql } from "postgres";
import { cloudflareSocket } from "./cf-socket.ts";

/**
 * Opens one connection from workerd (through Hyperdrive's connection string). One lease pays for
 * exactly this one connection, so the client may never open a second (`max: 1`). A connect that
 * gets no answer fails after `connectTimeoutMs` (`DB_CONNECT_TIMEOUT_MS`; postgres.js counts whole
 * seconds, so it is rounded up).
 *
 * @example
 * const sql = connectFromWorker(env.HYPERDRIVE.connectionString, "my-app", 5000);
 */
export function connectFromWorker(connectionString: string, applicationName = "leasegate", connectTimeoutMs = 5000): Sql {
  const options: postgres.Options<Record<string, never>> & { socket: typeof cloudflareSocket } = {
    max: 1,
    fetch_types: false,
    connect_timeout: Math.max(1, Math.ceil(connectTimeoutMs / 1000)),
    onnotice: () => {},
    connection: { application_name: applicationName },
    socket: cloudflareSocket,
  };
  return postgres(connectionString, options);
}

/**
 * Closes the connection and waits until it is really gone, so the slot is released only when
 * the database no longer counts the connection. Always with a timeout: after the server killed
 * a connection, postgres.js's plain `end()` can wait forever on the query that failed.
 *
 * @example
 * ctx.waitUntil(closeConnection(sql));
 */
export async function closeConnection(sql: Sql): Promise<void> {
  try {
    await sql.end({ timeout: 0 });
  } catch {
    // The connection is closed either way; nothing to report to the caller.
  }
}
