import type { PoolClient } from "@neondatabase/serverless";
import type { ClientConnection, ConnectTarget, DriverModule, NeonOptions, Row } from "../driver.ts";

/** What leasegate uses of `@neondatabase/serverless` 1.x (`import * as neon from "@neondatabase/serverless"`). */
export type NeonModule = Pick<typeof import("@neondatabase/serverless"), "Pool" | "neonConfig">;

/**
 * The Neon serverless driver over the app's own `@neondatabase/serverless` package: one Pool of
 * one client over WebSocket per connection, closed with it. `options` reach plain Postgres
 * through a WebSocket proxy (tests, local development).
 *
 * @example
 * import * as neon from "@neondatabase/serverless";
 * const driver = neonDriver(neon);
 */
export function neonDriver(neon: NeonModule, options: NeonOptions = {}): DriverModule<PoolClient> {
  return {
    name: "neon",
    packageName: "@neondatabase/serverless",
    async connect(target: ConnectTarget): Promise<ClientConnection<PoolClient>> {
      const { Pool, neonConfig } = neon;
      if (options.wsProxy !== undefined) neonConfig.wsProxy = options.wsProxy;
      if (options.useSecureWebSocket !== undefined) neonConfig.useSecureWebSocket = options.useSecureWebSocket;
      // Pipelining the startup needs cleartext password auth; off, it works with any method.
      neonConfig.pipelineConnect = false;
      const pool = new Pool({
        connectionString: target.connectionString,
        max: 1,
        connectionTimeoutMillis: target.connectTimeoutMs,
        application_name: target.applicationName,
      });
      // An idle client's error (server gone) must not become an uncaught exception.
      pool.on("error", () => {});
      let client: PoolClient;
      try {
        client = await pool.connect();
      } catch (error) {
        await pool.end().catch(() => {});
        throw error;
      }
      client.on("error", () => {});
      return {
        client,
        async query<R = Row>(text: string, params?: readonly unknown[]) {
          const result = await client.query(text, params as unknown[] | undefined);
          return result.rows as R[];
        },
        async close() {
          client.release(true);
          await pool.end().catch(() => {});
        },
      };
    },
  };
}
