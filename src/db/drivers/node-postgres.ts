import type { Client, ClientConfig } from "pg";
import type { ClientConnection, ConnectTarget, DriverModule, Row } from "../driver.ts";

/** What closing needs of a node-postgres client: `pg.Client` or anything shaped like it. */
export interface PgClientLike {
  end(): Promise<void>;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/** node-postgres's default export (`import pg from "pg"`), 8.13 or later: whichever the app installed. */
export type PgModule = { Client: new (config: ClientConfig) => Client };

// How long `end()` may take before the socket is destroyed outright. A graceful end is one round
// trip on loopback; past this the server or the network is gone and only our side is left.
const END_GRACE_MS = 2000;

/**
 * The node-postgres driver over the app's own `pg` package: one `pg.Client` per connection.
 * `pg.Client` picks its socket itself (TCP on Node and Deno, `cloudflare:sockets` in workerd with
 * `nodejs_compat`), so the same code serves a Hyperdrive connection string and a plain Postgres
 * URL. A failed connect leaves no socket behind.
 *
 * @example
 * import pg from "pg";
 * const conn = await pgDriver(pg).connect({ connectionString, applicationName: "app", connectTimeoutMs: 5000, edge: false });
 * try { await conn.query("SELECT $1::int AS n", [1]) } finally { await conn.close() }
 */
export function pgDriver(pg: PgModule): DriverModule<Client> {
  return {
    name: "pg",
    packageName: "pg",
    async connect(target: ConnectTarget): Promise<ClientConnection<Client>> {
      const client = new pg.Client({
        connectionString: target.connectionString,
        connectionTimeoutMillis: target.connectTimeoutMs,
        application_name: target.applicationName,
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
      return {
        client,
        async query<R = Row>(text: string, params?: readonly unknown[]) {
          const result = await client.query(text, params as unknown[] | undefined);
          return result.rows as R[];
        },
        close: () => closePgClient(client),
      };
    },
  };
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
