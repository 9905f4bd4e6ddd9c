import type { Client, ClientConfig } from "pg";
import { keyOf, sendCancelRequest } from "../cancel-request.ts";
import {
  type ClientConnection,
  type ConfigurableDriver,
  type ConnectTarget,
  type Row,
  defineDriver,
  startupParameters,
} from "../driver.ts";

/** What closing needs of a node-postgres client: `pg.Client` or anything shaped like it. */
export interface PgClientLike {
  end(): Promise<void>;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/** node-postgres's default export (`import pg from "pg"`), 8.13 or later: whichever the app installed. */
export type PgModule = { Client: new (config: ClientConfig) => Client };

/**
 * node-postgres's own `Client` options (`ssl`, `types`, `keepAlive`, more `options`), passed
 * through. Where to connect, the connect timeout and the application name are leasegate's (the
 * target's); the session limits win over the same settings given here.
 */
export type PgOptions = Omit<ClientConfig, "connectionString" | "connectionTimeoutMillis" | "application_name">;

// How long `end()` may take before the socket is destroyed outright. A graceful end is one round
// trip on loopback; past this the server or the network is gone and only our side is left.
const END_GRACE_MS = 2000;

/**
 * The node-postgres driver over the app's own `pg` package: one `pg.Client` per connection.
 * `pg.Client` picks its socket itself (TCP on Node and Deno, `cloudflare:sockets` in workerd with
 * `nodejs_compat`), so the same code serves a Hyperdrive connection string and a plain Postgres
 * URL. A failed connect leaves no socket behind. Session limits go in the startup packet
 * (`statement_timeout`, `idle_in_transaction_session_timeout`, and `client_connection_check_interval`
 * through `options`); `cancel()` sends a cancel request with the client's `processID`/`secretKey`.
 *
 * @example
 * import pg from "pg";
 * const conn = await pgDriver(pg)({ ssl: false }).connect({ connectionString, applicationName: "app", connectTimeoutMs: 5000, edge: false });
 * try { await conn.query("SELECT $1::int AS n", [1]) } finally { await conn.close() }
 */
export function pgDriver(pg: PgModule): ConfigurableDriver<Client, PgOptions> {
  return defineDriver({
    name: "pg",
    packageName: "pg",
    async connect(target: ConnectTarget, own: PgOptions): Promise<ClientConnection<Client>> {
      const client = new pg.Client({
        ...own,
        connectionString: target.connectionString,
        connectionTimeoutMillis: target.connectTimeoutMs,
        application_name: target.applicationName,
        ...pgStartup(target, own.options),
      });
      // A backend terminated between queries surfaces as an 'error' event, and so does, in workerd,
      // pg-cloudflare's read failing once the socket is closed by end(): without a listener either is
      // an uncaught exception. The next query fails with its own error anyway.
      client.on("error", () => {});
      try {
        await client.connect();
      } catch (error) {
        await closePgClient(client);
        throw connectFailure(error);
      }
      let closing: Promise<void> | undefined;
      return {
        client,
        async query<R = Row>(text: string, params?: readonly unknown[]) {
          const result = await client.query(text, params as unknown[] | undefined);
          return result.rows as R[];
        },
        cancel: () => cancelPgClient(client, target.edge),
        close: () => (closing ??= closePgClient(client)),
      };
    },
  });
}

// node-postgres sends `statement_timeout` and `idle_in_transaction_session_timeout` as startup
// parameters itself; any other setting goes in `options` (`-c name=value`), as libpq does.
function pgStartup(
  target: ConnectTarget,
  options: string | undefined,
): Pick<ClientConfig, "statement_timeout" | "idle_in_transaction_session_timeout" | "options"> {
  const p = startupParameters(target.limits);
  const out: Pick<ClientConfig, "statement_timeout" | "idle_in_transaction_session_timeout" | "options"> = {};
  if (p.statement_timeout) out.statement_timeout = Number(p.statement_timeout);
  if (p.idle_in_transaction_session_timeout)
    out.idle_in_transaction_session_timeout = Number(p.idle_in_transaction_session_timeout);
  if (p.client_connection_check_interval)
    out.options = [options, `-c client_connection_check_interval=${p.client_connection_check_interval}`]
      .filter(Boolean)
      .join(" ");
  return out;
}

/** What cancelling needs of a node-postgres (or Neon) client once connected: its server and backend key. */
export interface PgCancellable {
  readonly host?: unknown;
  readonly port?: unknown;
  readonly processID?: unknown;
  readonly secretKey?: unknown;
}

/**
 * Cancels the statement running on a connected node-postgres client: a Postgres cancel request
 * with its `processID` and `secretKey` on a new connection (`edge`: `cloudflare:sockets`). Never
 * throws; a client not connected yet (no key) has nothing running.
 *
 * @example
 * await cancelPgClient(client, false); await closePgClient(client);
 */
export async function cancelPgClient(client: PgCancellable, edge: boolean): Promise<void> {
  const key = keyOf(client.host, client.port, client.processID, client.secretKey);
  if (key) await sendCancelRequest(key, edge);
}

// node-postgres reports its own connect timeout as a bare "timeout expired" with no code; give it
// postgres.js's code so it classifies (retryable, DATABASE_UNAVAILABLE) like the other drivers'.
function connectFailure(error: unknown): unknown {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e && typeof e === "object" && e.code === undefined && /timeout/i.test(String(e.message ?? ""))) {
    return Object.assign(new Error("Connecting to the database timed out", { cause: error }), {
      code: "CONNECT_TIMEOUT",
    });
  }
  return error;
}

/**
 * Ends a node-postgres client and resolves once its socket is closed; never throws. A client whose
 * graceful end does not finish within 2 s (a server that stopped answering) has its socket
 * destroyed, so the caller never waits on a dead peer before giving its lease back.
 *
 * @example
 * ctx.waitUntil(closePgClient(client));
 */
export async function closePgClient(client: PgClientLike): Promise<void> {
  client.on("error", () => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ended = client.end().catch(() => {});
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), END_GRACE_MS);
  });
  try {
    if ((await Promise.race([ended, late])) !== "late") return;
    // `end()` waits for the server's goodbye; destroying the stream closes our side now, and
    // node-postgres then settles `end()` from the socket's close.
    (client as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream?.destroy?.();
    await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, END_GRACE_MS))]);
  } finally {
    clearTimeout(timer);
  }
}
