import { LeaseError } from "../../core/errors.ts";
import {
  type ClientConnection,
  type ConfigurableDriver,
  type ConnectTarget,
  type Row,
  defineDriver,
  startupParameters,
} from "../driver.ts";

/**
 * What leasegate uses of Bun's SQL client (`Bun.SQL`, `import { SQL } from "bun"`): declared here
 * so the project needs no Bun types. A query is a lazy promise that runs when awaited and has
 * `cancel()` (a Postgres cancel request).
 */
export interface BunSql {
  // biome-ignore lint/suspicious/noExplicitAny: Bun's tagged template takes any values.
  (strings: TemplateStringsArray, ...values: any[]): BunQuery;
  unsafe(text: string, params?: unknown[]): BunQuery;
  close(options?: { timeout?: number }): Promise<void>;
}

/** A query of Bun's SQL client. */
export interface BunQuery extends Promise<Row[]> {
  cancel(): unknown;
}

/** Bun's SQL class, as `new SQL(options)` takes it. */
export type BunSqlClass = new (options: Record<string, unknown>) => BunSql;

/**
 * Bun's own options of `new SQL(…)` (`prepare: false` behind a transaction-mode pooler, `tls`,
 * `bigint`, more `connection` parameters), passed through. A lease pays for one connection, so
 * `max` is 1; where to connect and the connect timeout are leasegate's; `connection` is merged
 * with the application name and the session limits.
 */
export interface BunSqlOptions {
  readonly prepare?: boolean;
  readonly tls?: unknown;
  readonly bigint?: boolean;
  readonly connection?: Record<string, string>;
  readonly [option: string]: unknown;
}

// How many queries a connection remembers to cancel: the newest; with one connection they run in turn.
const TRACKED_QUERIES = 16;

/**
 * The driver over Bun's own SQL client (`Bun.SQL`): one client with `max: 1` per connection,
 * opened with its first query. Session limits and the application name go in the startup packet
 * (`connection`); `cancel()` cancels the newest queries made on it (Bun sends the Postgres cancel
 * request), the app's own queries on `client` included. Bun's error codes become the ones the
 * database layer classifies (in `query`, and through `errorOf` for the app's own queries on
 * `client`): a server error's SQLSTATE, `ECONNREFUSED`, `CONNECT_TIMEOUT`, `CONNECTION_CLOSED`. Outside Bun (no `SQL` class) `connect` fails with `INVALID_CONFIG`.
 *
 * @example
 * const driver = bunSqlDriver(Bun.SQL)({ prepare: false });
 */
export function bunSqlDriver(SQL: BunSqlClass | undefined): ConfigurableDriver<BunSql, BunSqlOptions> {
  return defineDriver({
    name: "bun",
    packageName: "bun",
    async connect(target: ConnectTarget, own: BunSqlOptions): Promise<ClientConnection<BunSql>> {
      if (!SQL)
        throw new LeaseError("INVALID_CONFIG", "The `bun` driver runs on Bun only (`Bun.SQL`): run this with `bun`");
      const sql = new SQL({
        ...own,
        url: target.connectionString,
        max: 1,
        // Bun counts whole seconds; round up so a short timeout never becomes none.
        connectionTimeout: Math.max(1, Math.ceil(target.connectTimeoutMs / 1000)),
        connection: {
          ...own.connection,
          application_name: target.applicationName,
          ...startupParameters(target.limits),
        },
      });
      const queries: BunQuery[] = [];
      const client = tracking(sql, (query) => {
        queries.push(query);
        // `void`: a query runs when awaited; the caller awaits it, never this list.
        if (queries.length > TRACKED_QUERIES) void queries.shift();
      });
      let closing: Promise<void> | undefined;
      return {
        client,
        async query<R = Row>(text: string, params: readonly unknown[] = []) {
          try {
            // A plain array, as every driver answers (Bun's carries `count` and `command` besides).
            return Array.from(await client.unsafe(text, params as unknown[])) as R[];
          } catch (error) {
            throw withCode(error);
          }
        },
        errorOf: withCode,
        async cancel() {
          for (const query of queries.splice(0)) {
            try {
              query.cancel();
            } catch {
              // A query that already ended has nothing to cancel.
            }
          }
        },
        close: () =>
          (closing ??= sql.close({ timeout: 0 }).then(
            () => {},
            () => {},
          )),
      };
    },
  });
}

// The same client behind a Proxy that notes every query made through it: tagged, `unsafe`, `file`.
function tracking(sql: BunSql, note: (query: BunQuery) => void): BunSql {
  const noted = (query: unknown) => {
    // Queries only (they have `cancel`), not the fragments `sql(…)` also returns.
    if (typeof (query as { cancel?: unknown } | null)?.cancel === "function") note(query as BunQuery);
    return query;
  };
  return new Proxy(sql, {
    apply: (target, self, args) => noted(Reflect.apply(target, self, args)),
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function") return value;
      if (key === "unsafe" || key === "file")
        return (...args: unknown[]) => noted((value as (...a: unknown[]) => unknown).apply(target, args));
      return value;
    },
  });
}

// Bun's codes (`ERR_POSTGRES_*`, the SQLSTATE in `errno`) as the database layer classifies them.
const BUN_CODES: Record<string, string> = {
  ERR_POSTGRES_CONNECTION_REFUSED: "ECONNREFUSED",
  ERR_POSTGRES_CONNECTION_TIMEOUT: "CONNECT_TIMEOUT",
  ERR_POSTGRES_CONNECTION_CLOSED: "CONNECTION_CLOSED",
  ERR_POSTGRES_IDLE_TIMEOUT: "CONNECTION_CLOSED",
  ERR_POSTGRES_LIFETIME_TIMEOUT: "CONNECTION_CLOSED",
};

/**
 * A Bun SQL error with the code leasegate classifies: the server's SQLSTATE (Bun keeps it in
 * `errno`), or a connection code; other errors as they came. Its other fields (severity, detail,
 * table, …) are kept as they are, not as a `cause`: a server error then reads as the other drivers'
 * do, so the logs keep its codes and names and leave out its message and detail.
 *
 * @example
 * catch (e) { throw withCode(e) } // code "57014" for a cancelled statement
 */
export function withCode(error: unknown): unknown {
  const e = error as { code?: unknown; errno?: unknown; message?: unknown } | null;
  if (typeof e !== "object" || e === null || typeof e.code !== "string" || !e.code.startsWith("ERR_POSTGRES_"))
    return error;
  const state = typeof e.errno === "string" && /^[0-9A-Z]{5}$/.test(e.errno) ? e.errno : undefined;
  const code = state ?? BUN_CODES[e.code];
  if (!code) return error;
  const fields: Record<string, unknown> = {};
  for (const key of Object.keys(e)) fields[key] = (e as Record<string, unknown>)[key];
  const out = Object.assign(new Error(String(e.message ?? code)), fields, { code });
  out.name = error instanceof Error ? error.name : "Error";
  return out;
}
