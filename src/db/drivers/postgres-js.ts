import type postgres from "postgres";
import type { Sql } from "postgres";
import type { ClientConnection, ConnectTarget, DriverModule, Row } from "../driver.ts";

/** postgres.js's default export, 3.4.5 or later and 4.x: whichever the app installed. */
export type PostgresJs = typeof postgres;

/**
 * The postgres.js driver over the app's own `postgres` package: one client per connection
 * (`max: 1`: a lease pays for exactly one), the target's connect timeout and application name.
 * In a Worker, postgres.js 3.x gets leasegate's `cloudflare:sockets` adapter (its own polyfill
 * leaves an unhandled rejection on every `end()`); 4.x brings a workerd socket that closes cleanly.
 *
 * @example
 * import postgres from "postgres";
 * const driver = postgresJsDriver(postgres);
 */
export function postgresJsDriver(pg: PostgresJs): DriverModule<Sql> {
  return {
    name: "postgres",
    packageName: "postgres",
    async connect(target: ConnectTarget): Promise<ClientConnection<Sql>> {
      const options = {
        max: 1,
        fetch_types: false,
        // postgres.js counts whole seconds; round up so a short timeout never becomes none.
        connect_timeout: Math.max(1, Math.ceil(target.connectTimeoutMs / 1000)),
        onnotice: () => {},
        connection: { application_name: target.applicationName },
      };
      let sql = pg(target.connectionString, options) as unknown as Sql;
      // Only 4.x has `batch`; creating a client opens nothing, so the probe costs no connection.
      if (target.edge && typeof (sql as { batch?: unknown }).batch !== "function") {
        const { cloudflareSocket } = await import("../cf-socket.ts");
        sql = pg(target.connectionString, { ...options, socket: cloudflareSocket } as never) as unknown as Sql;
      }
      return {
        client: sql,
        query: <R = Row>(text: string, params: readonly unknown[] = []) =>
          sql.unsafe(text, params as never[]) as unknown as Promise<R[]>,
        close: () => closeSql(sql),
      };
    },
  };
}

/**
 * Closes a postgres.js client and waits until its connection is really gone, so the slot is
 * released only when the database no longer counts it. Always with a timeout: after the server
 * killed a connection, a plain `end()` can wait forever on the query that failed. Never throws.
 *
 * @example
 * ctx.waitUntil(closeSql(sql));
 */
export async function closeSql(sql: { end(options?: { timeout?: number }): Promise<void> }): Promise<void> {
  try {
    await sql.end({ timeout: 0 });
  } catch {
    // The connection is closed either way; nothing to report to the caller.
  }
}
