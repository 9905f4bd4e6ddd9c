/**
 * Finds or starts a Postgres. `npm test` takes DATABASE_URL when set; else the local cluster on
 * 127.0.0.1:5432 (started with pg_ctlcluster when installed but down); else an embedded PGlite
 * socket server, so a machine with no database still runs. `npm start` takes DATABASE_URL or PGlite.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import postgres from "postgres";

export interface Database {
  url: string;
  kind: "external" | "local-cluster" | "embedded";
  stop(): Promise<void>;
}

const LOCAL_URL = "postgres://postgres@127.0.0.1:5432/postgres";

/** True when a server answers `SELECT 1` at `url` within a few seconds. */
export async function reachable(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, connect_timeout: 3, onnotice: () => {} });
  try {
    await sql`SELECT 1`;
    return true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

function startLocalCluster(): boolean {
  if (!existsSync("/etc/postgresql")) return false;
  for (const version of readdirSync("/etc/postgresql")) {
    try {
      execFileSync("pg_ctlcluster", ["--skip-systemctl-redirect", version, "main", "start"], { stdio: "inherit" });
      return true;
    } catch {
      // Try the next installed version.
    }
  }
  return false;
}

async function waitFor(url: string, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await reachable(url)) return true;
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

/** Starts an in-memory PGlite behind the Postgres wire protocol on `port` (0 = any free port). */
export async function startEmbedded(port = 0): Promise<Database> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { PGLiteSocketServer } = await import("@electric-sql/pglite-socket");
  const db = await PGlite.create();
  const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port, maxConnections: 100 });
  await server.start();
  const address = server.getServerConn();
  return {
    url: `postgres://postgres@${address}/postgres`,
    kind: "embedded",
    async stop() {
      await server.stop();
      await db.close();
    },
  };
}

/**
 * The database to use, started if need be.
 *
 * @example
 * const db = await ensureDatabase(process.env.DATABASE_URL);
 */
export async function ensureDatabase(
  url: string | undefined,
  options: { embeddedPort?: number } = {},
): Promise<Database> {
  const none = async () => {};
  if (url) return { url, kind: "external", stop: none };
  if (await reachable(LOCAL_URL)) return { url: LOCAL_URL, kind: "local-cluster", stop: none };
  if (startLocalCluster() && (await waitFor(LOCAL_URL, 30_000)))
    return { url: LOCAL_URL, kind: "local-cluster", stop: none };
  return startEmbedded(options.embeddedPort);
}

/** `url` with its password replaced, for logs. */
export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, "$1***@");
}

/**
 * Hyperdrive insists on a password in its connection string. Servers with trust auth (the local
 * cluster, PGlite) ignore it, so a URL without one gets a placeholder.
 */
export function withPassword(url: string): string {
  const u = new URL(url);
  if (!u.password) u.password = "leasegate";
  return u.toString();
}
