import { LeaseError, expected } from "../core/index.ts";
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
   * An error of the driver's own client (`pool.sql(fn)`) as the database layer reads errors: `code`
   * a SQLSTATE or a connection code (`ECONNREFUSED`, `CONNECTION_CLOSED`), a server error's
   * `severity` beside it. Absent: the driver's errors read that way already (postgres.js, pg, Neon).
   */
  errorOf?(error: unknown): unknown;
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
 * A Postgres driver as leasegate uses it: open exactly one connection, query it, cancel what runs
 * on it, close it. Any object of this shape is a driver: `workerPool`, `localPool` and `leased`
 * take it as it is. leasegate's own are `driver` of `leasegate/postgres`, `leasegate/pg`,
 * `leasegate/neon` and `leasegate/bun` (each entry imports only its own package, so a Worker
 * bundles only the one it uses), listed by name for `DATABASE_CLIENT` in {@link DRIVER_PACKAGES}.
 *
 * @example
 * import { driver } from "leasegate/postgres";
 * const pool = workerPool(env, ctx, { driver: driver({ prepare: false }) });
 */
export interface DriverModule<Client = unknown> {
  /** The driver's name: its `DATABASE_CLIENT` value for leasegate's own drivers. */
  readonly name: string;
  /** The npm package the driver comes from. */
  readonly packageName: string;
  connect(target: ConnectTarget): Promise<ClientConnection<Client>>;
}

/**
 * A driver as its module writes it: how to open one connection to `target` with the app's own
 * `options` of the client library (passed through; leasegate sets only what a lease needs).
 */
export interface DriverDefinition<Client, Options> {
  readonly name: string;
  readonly packageName: string;
  connect(target: ConnectTarget, options: Options): Promise<ClientConnection<Client>>;
}

/**
 * A driver with no options of the app's, that called with options is the same driver with those:
 * `driver` is ready to pass, `driver({ prepare: false })` too.
 *
 * @example
 * const behindPgBouncer: DriverModule<Sql> = driver({ prepare: false });
 */
export type ConfigurableDriver<Client, Options> = DriverModule<Client> & ((options: Options) => DriverModule<Client>);

/**
 * A driver of `definition`: usable as it is (no options of the app's) and callable with options.
 *
 * @example
 * export const driver = defineDriver({ name: "pg", packageName: "pg", connect: (target, options) => open(target, options) });
 */
export function defineDriver<Client, Options extends object>(
  definition: DriverDefinition<Client, Options>,
): ConfigurableDriver<Client, Options> {
  const { name, packageName } = definition;
  const withOptions = (options: Options): DriverModule<Client> => {
    if (typeof options !== "object" || options === null)
      throw new LeaseError("INVALID_ARGUMENT", expected(`${name} driver options`, "an object", options));
    return { name, packageName, connect: (target) => definition.connect(target, options) };
  };
  // A function's own `name` is its identifier: the driver's name replaces it.
  return Object.defineProperties(withOptions, {
    name: { value: name, enumerable: true },
    packageName: { value: packageName, enumerable: true },
    connect: { value: (target: ConnectTarget) => definition.connect(target, {} as Options), enumerable: true },
  }) as ConfigurableDriver<Client, Options>;
}

/**
 * leasegate's drivers by the name `DATABASE_CLIENT` gives them, with the npm package each needs:
 * the one list of them. `connect.ts` loads each by its entry (`src/drivers/<name>.ts`), and the
 * compiler holds the two lists together (see "Adding a driver" in docs/api.md).
 *
 * @example
 * DRIVER_PACKAGES.neon // "@neondatabase/serverless"
 */
export const DRIVER_PACKAGES = {
  postgres: "postgres",
  pg: "pg",
  neon: "@neondatabase/serverless",
  bun: "bun",
} as const satisfies Record<string, string>;

/** The name of one of leasegate's drivers: a `DATABASE_CLIENT` value. */
export type DriverName = keyof typeof DRIVER_PACKAGES;

/**
 * Whether `name` is one of leasegate's drivers (a valid `DATABASE_CLIENT`).
 *
 * @example
 * isDriverName("pg") // true
 */
export function isDriverName(name: string): name is DriverName {
  return Object.hasOwn(DRIVER_PACKAGES, name);
}

/** Opens connections of one kind for one configuration; made by {@link bindDriver} or {@link openDriver}. */
export interface Driver<C extends Connection = Connection> {
  readonly name: string;
  /** Opens one connection; `limits` are sent with its startup (see {@link SessionLimits}). */
  connect(limits?: SessionLimits): Promise<C>;
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
