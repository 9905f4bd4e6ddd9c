import postgres, { type Sql } from "postgres";
import { cloudflareSocket } from "./cf-socket.ts";
import { closeSql } from "./drivers/postgres-js.ts";

/**
 * Opens one postgres.js connection from workerd (through Hyperdrive's connection string): for the
 * project's own tests and tools, which use the postgres.js they install. Apps get their
 * connections from `workerPool` with the driver they pass.
 * A connect that gets no answer fails after `connectTimeoutMs` (rounded up to whole seconds).
 *
 * @example
 * const sql = connectFromWorker(env.HYPERDRIVE.connectionString, "my-app", 5000);
 */
export function connectFromWorker(
  connectionString: string,
  applicationName = "leasegate",
  connectTimeoutMs = 5000,
): Sql {
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
 * Closes the connection and waits until it is really gone (see `closeSql`).
 *
 * @example
 * ctx.waitUntil(closeConnection(sql));
 */
export const closeConnection: (sql: Sql) => Promise<void> = closeSql;
