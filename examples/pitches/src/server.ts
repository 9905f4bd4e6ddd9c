/**
 * The pitches app served from a plain process (Node, Deno or Bun): the same `handle()` and HTTP
 * contract as the Worker, with a `localPool` (the Postgres-backed coordinator) instead of the
 * Durable Object. Runtime specifics (the HTTP listener, env, signals, Bun's own SQL client) live
 * in `main-node.ts`, `main-deno.ts` and `main-bun.ts`.
 */
import postgres, { type Sql } from "postgres";
import type { DriverModule } from "leasegate";
import { DEFAULT_DATABASE_URL, type LocalPoolEnv, localPool } from "leasegate/local";
import { driver as postgresJs } from "leasegate/postgres";
import { handle } from "./app.ts";
import { migrate, seed } from "./schema.ts";

export { DEFAULT_DATABASE_URL };

/**
 * The variables the local server reads: the same names as the Worker's.
 *
 * @example
 * const env: LocalEnv = { DATABASE_URL: "postgres://postgres@127.0.0.1:5432/postgres", LEASE_LIMIT: "18" };
 */
export interface LocalEnv extends LocalPoolEnv {
  DEBUG_TOKEN?: string | undefined;
}

/**
 * A running local app: a fetch-style handler and its shutdown.
 *
 * @example
 * const app: LocalApp = await createLocalApp(process.env); await app.close();
 */
export interface LocalApp {
  /** Answers one request: hand it to any fetch-style listener. */
  fetch(request: Request): Promise<Response>;
  /** Withdraws waiters, stops listening, closes the coordinator's connections. */
  close(): Promise<void>;
}

/**
 * The one line a start that failed after its preflight prints: what failed, its code, no stack.
 *
 * @example
 * try { app = await createLocalApp(env) } catch (e) { console.error(startFailure(e)); process.exit(1) }
 */
export function startFailure(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? ` (${e.code})` : "";
  const message = String(e?.message ?? error).split("\n")[0];
  return `leasegate: the app could not start${code}: ${message}`;
}

/** How often the local server compares held leases with `pg_stat_activity` (the Worker's cron: once a minute). */
const RECONCILE_EVERY_MS = 60_000;

/**
 * Migrates and seeds the example schema, then returns the app on this process's pool, whose leased
 * connections `driver` opens (default postgres.js; Bun's own SQL client on Bun).
 *
 * @example
 * const app = await createLocalApp(process.env);
 * const res = await app.fetch(new Request("http://x/health"));
 */
export async function createLocalApp(env: LocalEnv, driver: DriverModule<Sql> = postgresJs): Promise<LocalApp> {
  const setup = postgres(env.DATABASE_URL || DEFAULT_DATABASE_URL, { max: 1, onnotice: () => {} });
  try {
    await migrate(setup);
    await seed(setup);
  } finally {
    await setup.end({ timeout: 1 });
  }
  const pool = await localPool(env, { driver });
  // Periodic reconciliation, as the Worker's cron does; a failed run (database down) is retried next period.
  const reconciling = setInterval(() => void pool.operator?.reconcile().catch(() => {}), RECONCILE_EVERY_MS);
  (reconciling as { unref?: () => void }).unref?.();
  return {
    fetch: (request) => handle(request, { pool, debugToken: env.DEBUG_TOKEN }),
    close: async () => {
      clearInterval(reconciling);
      await pool.close();
    },
  };
}
