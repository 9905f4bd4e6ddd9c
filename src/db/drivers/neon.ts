import type { PoolClient } from "@neondatabase/serverless";
import {
  type ClientConnection,
  type ConfigurableDriver,
  type ConnectTarget,
  type Row,
  defineDriver,
  startupParameters,
} from "../driver.ts";

/** Options of the Neon driver; they matter off Neon only: a WebSocket proxy in front of plain Postgres. */
export interface NeonOptions {
  /** `host:port/path` of a WebSocket-to-TCP proxy, or a function of the database's host and port. */
  wsProxy?: string | ((host: string, port: number | string) => string);
  /** `false` for a `ws://` proxy (tests, a proxy on localhost). */
  useSecureWebSocket?: boolean;
}

/** What leasegate uses of `@neondatabase/serverless` 1.x (`import * as neon from "@neondatabase/serverless"`). */
export type NeonModule = Pick<typeof import("@neondatabase/serverless"), "Pool" | "neonConfig">;

/**
 * The Neon serverless driver over the app's own `@neondatabase/serverless` package: one Pool of
 * one client over WebSocket per connection, closed with it. `options` reach plain Postgres
 * through a WebSocket proxy (tests, local development). Session limits go in the startup packet as
 * for node-postgres; `cancel()` sends the cancel request the driver's own way, over a new
 * WebSocket (Neon's proxy routes it; a plain TCP request could not reach the backend there).
 *
 * @example
 * import * as neon from "@neondatabase/serverless";
 * const driver = neonDriver(neon)({ wsProxy: (host) => `${host}:5433/v1` });
 */
export function neonDriver(neon: NeonModule, defaults: NeonOptions = {}): ConfigurableDriver<PoolClient, NeonOptions> {
  return defineDriver({
    name: "neon",
    packageName: "@neondatabase/serverless",
    async connect(target: ConnectTarget, own: NeonOptions): Promise<ClientConnection<PoolClient>> {
      const options = { ...defaults, ...own };
      const { Pool, neonConfig } = neon;
      if (options.wsProxy !== undefined) neonConfig.wsProxy = options.wsProxy;
      if (options.useSecureWebSocket !== undefined) neonConfig.useSecureWebSocket = options.useSecureWebSocket;
      // Pipelining the startup needs cleartext password auth; off, it works with any method.
      neonConfig.pipelineConnect = false;
      const p = startupParameters(target.limits);
      const pool = new Pool({
        connectionString: target.connectionString,
        max: 1,
        connectionTimeoutMillis: target.connectTimeoutMs,
        application_name: target.applicationName,
        ...(p.statement_timeout && {
          statement_timeout: Number(p.statement_timeout),
          idle_in_transaction_session_timeout: Number(p.idle_in_transaction_session_timeout),
        }),
        ...(p.client_connection_check_interval && {
          options: `-c client_connection_check_interval=${p.client_connection_check_interval}`,
        }),
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
      let closing: Promise<void> | undefined;
      return {
        client,
        async query<R = Row>(text: string, params?: readonly unknown[]) {
          const result = await client.query(text, params as unknown[] | undefined);
          return result.rows as R[];
        },
        cancel: () => cancelOverOwnSocket(client),
        close: () =>
          (closing ??= (async () => {
            client.release(true);
            await pool.end().catch(() => {});
          })()),
      };
    },
  });
}

// How long a cancel request may take over the driver's socket before the caller closes instead.
const CANCEL_TIMEOUT_MS = 1000;

/**
 * Sends a cancel request for `client`'s backend the way node-postgres's own `Client#cancel` does —
 * a new client of the same class (so the same socket: Neon's WebSocket) connects and sends the
 * key — without its check of the deprecated `activeQuery`. Resolves when the server closed that
 * connection, or after 1 s; never throws.
 */
async function cancelOverOwnSocket(client: PoolClient): Promise<void> {
  const c = client as unknown as {
    processID?: number | null;
    secretKey?: number | null;
    host?: string;
    port?: number;
    connectionParameters?: unknown;
    constructor: new (config: unknown) => { connection: CancelConnection };
  };
  if (!c.processID) return;
  let con: CancelConnection;
  try {
    con = new c.constructor(c.connectionParameters).connection;
  } catch {
    return;
  }
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      try {
        con.end();
      } catch {
        // Already closed.
      }
      resolve();
    };
    const timer = setTimeout(done, CANCEL_TIMEOUT_MS);
    con.on("connect", () => con.cancel(c.processID!, c.secretKey!));
    con.on("error", done);
    con.on("end", done);
    try {
      con.connect(c.port ?? 5432, c.host ?? "localhost");
    } catch {
      done();
    }
  });
}

interface CancelConnection {
  connect(port: number, host: string): void;
  cancel(processID: number, secretKey: number): void;
  end(): void;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
}
