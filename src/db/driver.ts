import type { DatabaseConfig } from "./config.ts";

/** Rows as every driver returns them: plain objects keyed by column name. */
export type Row = Record<string, unknown>;

/**
 * One open database connection, whatever the driver. A lease pays for exactly one of these.
 * `query` takes Postgres placeholders (`$1`, `$2`).
 */
export interface Connection {
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
  /**
   * Cancels the statement running on this connection, if any, with a Postgres cancel request on a
   * new connection; resolves once the server took it (or gave no sign within 1 s); never throws.
   * The statement then fails with 57014. Where no request can be sent (no backend key known yet,
   * a proxy that cannot route it) it does nothing: closing the connection next is what stops the
   * backend then (`client_connection_check_interval`).
   */
  cancel(): Promise<void>;
  /** Closes the connection; never throws, and is done only when the connection is gone. Idempotent. */
  close(): Promise<void>;
  /**
   * True while a statement handed to a lazy client (postgres.js opens its connection with the
   * first query) still waits for the connection to open: nothing has been sent yet. Absent: the
   * connection is open once `connect` resolved.
   */
  waiting?(): boolean;
}

/**
 * Server settings a connection carries from its first byte, sent as startup parameters (no extra
 * round trip): what is left of the request's deadline becomes the statement's limit, and a check
 * interval makes a backend whose client closed its socket stop its statement (Postgres ≥ 14).
 */
export interface SessionLimits {
  /** `statement_timeout` and `idle_in_transaction_session_timeout`, ms (≥ 1). */
  readonly statementTimeoutMs?: number | undefined;
  /** `client_connection_check_interval`, ms (≥ 1). */
  readonly connectionCheckMs?: number | undefined;
  /**
   * `LEASE_ENFORCE=terminate`: the lease the connection is opened for. {@link bindDriver} tags the
   * connection with it: `application_name` becomes `${applicationName}/${leaseId.slice(0, 8)}`, so
   * the database shows whose lease pays for each backend. An application name longer than
   * {@link MAX_TAGGED_APPLICATION_NAME} bytes is left untagged (Postgres cuts names at 63 bytes).
   */
  readonly leaseId?: string | undefined;
}

/** The longest `application_name` a lease tag is added to, bytes: 54 + `/` + 8 = Postgres's 63. */
export const MAX_TAGGED_APPLICATION_NAME = 54;

/**
 * `applicationName` tagged with the lease `leaseId` (its first 8 characters), or as it is when the
 * tag would not fit Postgres's 63 bytes.
 *
 * @example
 * taggedApplicationName("web", "3f2a9c1b-0d4e-…") // "web/3f2a9c1b"
 */
export function taggedApplicationName(applicationName: string, leaseId: string): string {
  if (new TextEncoder().encode(applicationName).length > MAX_TAGGED_APPLICATION_NAME) return applicationName;
  return `${applicationName}/${leaseId.slice(0, 8)}`;
}

/**
 * The startup parameters of `limits`, as Postgres names them (values in ms, as strings).
 *
 * @example
 * startupParameters({ statementTimeoutMs: 900 }) // { statement_timeout: "900", idle_in_transaction_session_timeout: "900" }
 */
export function startupParameters(limits: SessionLimits | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const timeout = limits?.statementTimeoutMs;
  if (timeout !== undefined && timeout >= 1) {
    out.statement_timeout = String(Math.ceil(timeout));
    out.idle_in_transaction_session_timeout = String(Math.ceil(timeout));
  }
  const check = limits?.connectionCheckMs;
  if (check !== undefined && check >= 1) out.client_connection_check_interval = String(Math.ceil(check));
  return out;
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
  /** Settings the connection starts with (see {@link SessionLimits}); none when undefined. */
  readonly limits?: SessionLimits | undefined;
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
  /** Opens one connection; `limits` are sent with its startup (see {@link SessionLimits}). */
  connect(limits?: SessionLimits): Promise<C>;
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
  return {
    name: module.name,
    connect: (limits) => {
      if (!limits) return module.connect(target);
      const { leaseId } = limits;
      const applicationName = leaseId ? taggedApplicationName(target.applicationName, leaseId) : target.applicationName;
      return module.connect({ ...target, applicationName, limits });
    },
  };
}
