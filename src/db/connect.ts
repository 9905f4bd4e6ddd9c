import type { Sql } from "postgres";
import type { DatabaseConfig } from "./config.ts";

/** Rows as every driver returns them: plain objects keyed by column name. */
export type Row = Record<string, unknown>;

/**
 * One open database connection, whatever the driver. A lease pays for exactly one of these.
 * `query` takes Postgres placeholders (`$1`, `$2`).
 */
export interface Connection {
  query(text: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Closes the connection; never throws, and is done only when the connection is gone. */
  close(): Promise<void>;
}

/** Opens connections of one kind; picked by {@link openDriver} from the configuration. */
export interface Driver {
  readonly name: DatabaseConfig["driver"];
  connect(): Promise<Connection>;
}

/** Settings of the Neon driver that only matter off Neon: a WebSocket proxy in front of plain Postgres. */
export interface NeonOptions {
  /** `host:port/path` of a WebSocket-to-TCP proxy, or a function of the database's host and port. */
  wsProxy?: string | ((host: string, port: number | string) => string);
  /** `false` for a `ws://` proxy (tests, a proxy on localhost). */
  useSecureWebSocket?: boolean;
}

/**
 * The driver for a configuration: Hyperdrive + postgres.js over `cloudflare:sockets` (edge), the
 * Neon serverless Pool over WebSocket (production without Hyperdrive), postgres.js over TCP
 * (local), or node-postgres on either of the first and last (`DATABASE_CLIENT=pg`). Every driver
 * opens exactly one connection per `connect()`, and its `close()` resolves once that connection is
 * gone. Runtime-specific modules are loaded only on the path that needs them, so this file
 * imports cleanly on Node, Deno and workerd.
 *
 * @example
 * const driver = openDriver(databaseConfig(process.env));
 * const conn = await driver.connect();
 * try { await conn.query("SELECT 1") } finally { await conn.close() }
 */
export function openDriver(config: DatabaseConfig, neon: NeonOptions = {}): Driver {
  const connect = {
    hyperdrive: () => connectHyperdrive(config),
    postgres: () => connectPostgres(config),
    pg: async () => (await import("./drivers/node-postgres.ts")).openPgConnection(config),
    neon: () => connectNeon(config, neon),
  }[config.driver];
  return { name: config.driver, connect };
}

async function connectHyperdrive(config: DatabaseConfig): Promise<Connection> {
  const { connectFromWorker, closeConnection } = await import("./hyperdrive.ts");
  const sql = connectFromWorker(config.connectionString, config.applicationName, config.connectTimeoutMs);
  return { query: (text, params) => sql.unsafe(text, params as never[]) as Promise<Row[]>, close: () => closeConnection(sql) };
}

/**
 * One postgres.js connection over TCP (`max: 1`: the lease pays for exactly one), with the
 * configuration's connect timeout and application name.
 *
 * @example
 * const sql = await postgresClient(config); await sql`SELECT 1`; await sql.end({ timeout: 0 });
 */
export async function postgresClient(config: Pick<DatabaseConfig, "connectionString" | "connectTimeoutMs" | "applicationName">): Promise<Sql> {
  const { default: postgres } = await import("postgres");
  return postgres(config.connectionString, {
    max: 1,
    fetch_types: false,
    // postgres.js counts whole seconds; round up so a short timeout never becomes none.
    connect_timeout: Math.max(1, Math.ceil(config.connectTimeoutMs / 1000)),
    onnotice: () => {},
    connection: { application_name: config.applicationName },
  });
}

async function connectPostgres(config: DatabaseConfig): Promise<Connection> {
  const sql = await postgresClient(config);
  return {
    query: (text, params) => sql.unsafe(text, params as never[]) as Promise<Row[]>,
    async close() {
      await sql.end({ timeout: 0 }).catch(() => {});
    },
  };
}

async function connectNeon(config: DatabaseConfig, neon: NeonOptions): Promise<Connection> {
  const { Pool, neonConfig } = await import("@neondatabase/serverless");
  if (neon.wsProxy !== undefined) neonConfig.wsProxy = neon.wsProxy;
  if (neon.useSecureWebSocket !== undefined) neonConfig.useSecureWebSocket = neon.useSecureWebSocket;
  // Pipelining the startup needs cleartext password auth; off, it works with any method.
  neonConfig.pipelineConnect = false;
  const pool = new Pool({
    connectionString: config.connectionString,
    max: 1,
    connectionTimeoutMillis: config.connectTimeoutMs,
    application_name: config.applicationName,
  });
  // An idle client's error (server gone) must not become an uncaught exception.
  pool.on("error", () => {});
  let client: import("@neondatabase/serverless").PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    await pool.end().catch(() => {});
    throw error;
  }
  client.on("error", () => {});
  return {
    async query(text, params) {
      const result = await client.query(text, params as unknown[] | undefined);
      return result.rows as Row[];
    },
    async close() {
      client.release(true);
      await pool.end().catch(() => {});
    },
  };
}
