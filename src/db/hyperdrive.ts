import postgres, { type Sql } from "postgres";
import { cloudflareSocket } from "./cf-socket.ts";
import { closeSql } from "./drivers/postgres-js.ts";

/**
 * Opens one postgres.js connection from workerd (through Hyperdrive's connection string): for the
 * project's own tests and tools, which use the postgres.js they install. Apps get their
 * connections from `workerPool` with the driver they pass.
 *
 * @example
 * const sql = connectFromWorker(env.HYPERDRIVE.connectionString, "my-app");
 */
export function connectFromWorker(connectionString: string, applicationName = "leasegate"): Sql {
  const options: postgres.Options<Record<string, never>> & { socket: typeof cloudflareSocket } = {
    max: 1,
    fetch_types: false,
    connect_timeout: 10,
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
