import type postgres from "postgres";
import type { Options, PostgresType, Sql } from "postgres";
import { type BackendKey, keyOf, sendCancelRequest } from "../cancel-request.ts";
import {
  type ClientConnection,
  type ConfigurableDriver,
  type ConnectTarget,
  type Row,
  defineDriver,
  startupParameters,
} from "../driver.ts";

/** postgres.js's default export, 3.4.5 or later and 4.x: whichever the app installed. */
export type PostgresJs = typeof postgres;

/**
 * postgres.js's own options (`prepare: false` behind a transaction-mode pooler, `ssl`, `types`,
 * `transform`, more `connection` parameters), passed through. A lease pays for one connection, so
 * `max` is 1; the connect timeout and the socket are leasegate's; `connection` is merged with the
 * application name and the session limits.
 */
export type PostgresJsOptions = Omit<Options<Record<string, PostgresType>>, "max" | "connect_timeout" | "socket">;

/**
 * The postgres.js driver over the app's own `postgres` package: one client per connection
 * (`max: 1`: a lease pays for exactly one), the target's connect timeout, application name and
 * session limits (startup parameters in `connection`: no extra round trip). postgres.js opens the
 * connection with the first query, so `opened()` says whether one was sent yet. In a Worker,
 * postgres.js 3.x gets leasegate's `cloudflare:sockets` adapter (its own polyfill leaves an
 * unhandled rejection on every `end()`); 4.x brings a workerd socket that closes cleanly.
 * `cancel()` sends a cancel request with the backend key of any query that ran on the connection,
 * the app's own queries on `client` included (see {@link trackBackend}).
 *
 * @example
 * import postgres from "postgres";
 * const driver = postgresJsDriver(postgres)({ prepare: false });
 */
export function postgresJsDriver(pg: PostgresJs): ConfigurableDriver<Sql, PostgresJsOptions> {
  return defineDriver({
    name: "postgres",
    packageName: "postgres",
    async connect(target: ConnectTarget, own: PostgresJsOptions): Promise<ClientConnection<Sql>> {
      const options = {
        fetch_types: false,
        onnotice: () => {},
        ...own,
        max: 1,
        // postgres.js counts whole seconds; round up so a short timeout never becomes none.
        connect_timeout: Math.max(1, Math.ceil(target.connectTimeoutMs / 1000)),
        connection: {
          ...own.connection,
          application_name: target.applicationName,
          ...startupParameters(target.limits),
        },
      };
      let sql = pg(target.connectionString, options) as unknown as Sql;
      // Only 4.x has `batch`; creating a client opens nothing, so the probe costs no connection.
      if (target.edge && typeof (sql as { batch?: unknown }).batch !== "function") {
        const { cloudflareSocket } = await import("../cf-socket.ts");
        sql = pg(target.connectionString, { ...options, socket: cloudflareSocket } as never) as unknown as Sql;
      }
      const tracked = trackBackend(sql);
      let closing: Promise<void> | undefined;
      return {
        client: tracked.sql,
        query: <R = Row>(text: string, params: readonly unknown[] = []) =>
          tracked.sql.unsafe(text, params as never[]) as unknown as Promise<R[]>,
        waiting: () => tracked.waiting(),
        async cancel() {
          const key = tracked.key();
          if (key) await sendCancelRequest(key, target.edge);
        },
        close: () => (closing ??= closeSql(sql)),
      };
    },
  });
}

// How many queries not yet sent a client remembers while it has no backend key: the key comes
// from the first one sent; an app that builds many queries before running one needs only one.
const TRACKED_QUERIES = 16;

/**
 * A postgres.js client that remembers the backend it runs on, so whatever runs on it can be
 * cancelled: a Postgres cancel request needs the backend's key (pid and secret), which postgres.js
 * keeps inside and hands to every query it sends (`query.state`). The returned client is the same
 * client (a Proxy): each query made through it — tagged templates, `unsafe`, `file`, and inside
 * `begin` and `reserve` — is noted until one has been sent; `key()` reads the key off it. A
 * client on which nothing ran yet has no key: nothing runs to cancel then.
 *
 * @example
 * const { sql: client, key } = trackBackend(postgres(url, { max: 1 }));
 * await sendCancelRequest(key()!, false);
 */
export function trackBackend(sql: Sql): {
  sql: Sql;
  key: () => BackendKey | undefined;
  waiting: () => boolean;
} {
  const queries: unknown[] = [];
  let backend: { pid?: unknown; secret?: unknown } | undefined;
  const note = (query: unknown) => {
    // Queries only (they have `cancel`), not the fragments and identifiers `sql(…)` also returns.
    const isQuery = typeof (query as { cancel?: unknown } | null)?.cancel === "function";
    if (backend === undefined && isQuery && queries.length < TRACKED_QUERIES) queries.push(query);
    return query;
  };
  const options = (sql as unknown as { options?: { host?: unknown[]; port?: unknown[] } }).options;
  return {
    sql: tracking(sql, note),
    key() {
      // The backend object is the connection's own, filled in place at every (re)connect.
      backend ??= queries.map((q) => (q as { state?: typeof backend }).state).find((s) => s?.pid);
      if (backend) queries.length = 0;
      return backend && keyOf(options?.host?.[0], options?.port?.[0], backend.pid, backend.secret);
    },
    /** Whether queries were made but none handed to an open connection yet (it is opening). */
    waiting: () =>
      backend === undefined && queries.length > 0 && !queries.some((q) => Boolean((q as { state?: unknown }).state)),
  };
}

function tracking<S extends object>(sql: S, note: (query: unknown) => unknown): S {
  return new Proxy(sql, {
    apply: (target, self, args) => note(Reflect.apply(target as () => unknown, self, args)),
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function") return value;
      const fn = value as (...args: unknown[]) => unknown;
      if (key === "unsafe" || key === "file") return (...args: unknown[]) => note(fn.apply(target, args));
      if (key === "begin" || key === "savepoint")
        return (...args: unknown[]) => {
          // The callback (last argument) gets the transaction's own client: track it too.
          const last = args.length - 1;
          const body = args[last];
          if (typeof body === "function") args[last] = (inner: object) => body(tracking(inner, note));
          return fn.apply(target, args);
        };
      if (key === "reserve")
        return async (...args: unknown[]) => tracking((await fn.apply(target, args)) as object, note);
      return value;
    },
  });
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
