import type { DatabaseConfig } from "./config.ts";

/** Rows as every driver returns them: plain objects keyed by column name. */
export type Row = Record<string, unknown>;

/**
 * One open database connection, whatever the driver. A lease pays for exactly one of these.
 * `query` takes Postgres placeholders (`$1`, `$2`).
 */
export interface Connection {
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
  /** Closes the connection; never throws, and is done only when the connection is gone. */
  close(): Promise<void>;
}

/** A connection that also hands out the driver's own client (postgres.js `Sql`, `pg.Client`, Neon `PoolClient`). */
export interface ClientConnection<Client> extends Connection {
  readonly client: Client;
}

/** Where and how one connection is opened. */
export interface ConnectTarget {
  readonly connectionString: string;
  readonly applicationName: string;
  /** Gives up connecting after this long, ms. */
  readonly connectTimeoutMs: number;
  /** True inside a Worker (a Hyperdrive binding): the socket is `cloudflare:sockets`. */
  readonly edge: boolean;
}

/**
 * A Postgres driver as leasegate uses it: open exactly one connection, query it, close it. One per
 * driver package, exported as `driver` by `leasegate/postgres`, `leasegate/pg` and `leasegate/neon`;
 * each of those entries imports only its own driver, so a Worker bundles only the one it uses.
 *
 * @example
 * import { driver } from "leasegate/postgres";
 * const pool = workerPool(env, ctx, { driver });
 */
export interface DriverModule<Client = unknown> {
  readonly name: "postgres" | "pg" | "neon";
  /** The npm package the driver comes from. */
  readonly packageName: string;
  connect(target: ConnectTarget): Promise<ClientConnection<Client>>;
}

/** Opens connections of one kind for one configuration; made by {@link bindDriver} or {@link openDriver}. */
export interface Driver<C extends Connection = Connection> {
  readonly name: DriverModule["name"];
  connect(): Promise<C>;
}

/** Settings of the Neon driver that only matter off Neon: a WebSocket proxy in front of plain Postgres. */
export interface NeonOptions {
  /** `host:port/path` of a WebSocket-to-TCP proxy, or a function of the database's host and port. */
  wsProxy?: string | ((host: string, port: number | string) => string);
  /** `false` for a `ws://` proxy (tests, a proxy on localhost). */
  useSecureWebSocket?: boolean;
}

/** Where a configuration's connections go. */
export function targetOf(
  config: Pick<DatabaseConfig, "connectionString" | "applicationName" | "connectTimeoutMs" | "environment">,
): ConnectTarget {
  return {
    connectionString: config.connectionString,
    applicationName: config.applicationName,
    connectTimeoutMs: config.connectTimeoutMs,
    edge: config.environment === "edge",
  };
}

/**
 * A driver module bound to a configuration: every `connect()` opens one connection to it.
 *
 * @example
 * const conn = await bindDriver(driver, config).connect();
 */
export function bindDriver<Client>(
  module: DriverModule<Client>,
  config: DatabaseConfig,
): Driver<ClientConnection<Client>> {
  const target = targetOf(config);
  return { name: module.name, connect: () => module.connect(target) };
}
