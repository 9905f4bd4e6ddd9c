/**
 * The example app and operator endpoints of the Worker, served from a plain process (Node or
 * Deno): the same `handle()` and HTTP contract, with a {@link PostgresCoordinator} instead of the
 * Durable Object. Runtime specifics (the HTTP listener, env, signals) live in `main-node.ts` and
 * `main-deno.ts`.
 */
import postgres, { type Sql } from "postgres";
import { Leases } from "../src/client/leases.ts";
import { type PoolEnv, configFromEnv } from "../src/core/index.ts";
import { toDatabaseError } from "../src/db/errors.ts";
import { migrate, seed } from "../src/db/schema.ts";
import { type AppDeps, type OperatorControls, type WithDatabase, handle } from "../src/http/app.ts";
import { PostgresCoordinator } from "./postgres-coordinator.ts";

/**
 * The variables the local server reads: the same names as the Worker's.
 *
 * @example
 * const env: LocalEnv = { DATABASE_URL: "postgres://postgres@127.0.0.1:5432/postgres", LEASE_LIMIT: "18" };
 */
export interface LocalEnv extends PoolEnv {
  DATABASE_URL?: string | undefined;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string | undefined;
  DEBUG_TOKEN?: string | undefined;
  LEASE_POOL?: string | undefined;
  /** `application_name` of the app's connections, to find them in `pg_stat_activity`. */
  APPLICATION_NAME?: string | undefined;
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
 * The local Postgres of the developers' and CI machines, when DATABASE_URL is unset.
 *
 * @example
 * const url = env.DATABASE_URL || DEFAULT_DATABASE_URL;
 */
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres";

/** How often the local server compares held leases with `pg_stat_activity` (the Worker's cron: once a minute). */
const RECONCILE_EVERY_MS = 60_000;

/**
 * Migrates and seeds the example schema, then returns the app wired to Postgres: one fresh
 * connection per lease (closed before the slot is given back, as in the Worker), so the
 * connections the app holds never exceed the leases it holds.
 *
 * @example
 * const app = await createLocalApp(process.env);
 * const res = await app.fetch(new Request("http://x/health"));
 */
export async function createLocalApp(env: LocalEnv): Promise<LocalApp> {
  const url = env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const pool = env.LEASE_POOL || "main";
  const applicationName = env.APPLICATION_NAME || "leasegate";
  const config = configFromEnv(env);
  const connect = (): Sql =>
    postgres(url, { max: 1, fetch_types: false, connect_timeout: 10, onnotice: () => {}, connection: { application_name: applicationName } });
  const close = async (sql: Sql) => {
    await sql.end({ timeout: 0 }).catch(() => {});
  };

  const setup = connect();
  try {
    await migrate(setup);
    await seed(setup);
  } finally {
    await close(setup);
  }

  if (env.COORDINATOR === "off") {
    const withDatabase: WithDatabase = async (fn) => {
      const sql = connect();
      try {
        return await fn(sql);
      } catch (error) {
        throw toDatabaseError(error);
      } finally {
        await close(sql);
      }
    };
    const deps: AppDeps = { withDatabase, stats: undefined, debugToken: env.DEBUG_TOKEN, pool };
    return { fetch: (request) => handle(request, deps), close: async () => {} };
  }

  // The coordinator's bookkeeping connections are its own, apart from the leased ones.
  const control = postgres(url, { max: 2, onnotice: () => {}, connection: { application_name: `${applicationName}-coordinator` } });
  const coordinator = new PostgresCoordinator({ sql: control, pool, config });
  await coordinator.ready();
  const leases = new Leases(coordinator);
  const withDatabase: WithDatabase = (fn, { holder, waitMs }) =>
    leases.withLease(
      async ({ beforeRelease }) => {
        const sql = connect();
        beforeRelease(() => close(sql));
        try {
          return await fn(sql);
        } catch (error) {
          throw toDatabaseError(error);
        }
      },
      { holder, waitMs },
    );
  const operator: OperatorControls = {
    stats: () => coordinator.operatorStats(),
    pause: () => coordinator.pause(),
    resume: () => coordinator.resume(),
    setLimit: (limit) => coordinator.setLimit(limit),
    revoke: (id) => coordinator.revoke(id),
    reconcile: async () => {
      try {
        return await coordinator.reconcile(applicationName);
      } catch (error) {
        throw toDatabaseError(error);
      }
    },
  };
  const deps: AppDeps = { withDatabase, stats: () => leases.stats(), debugToken: env.DEBUG_TOKEN, pool, operator };
  // Periodic reconciliation, as the Worker's cron does; a failed run (database down) is retried next period.
  const reconciling = setInterval(() => void operator.reconcile().catch(() => {}), RECONCILE_EVERY_MS);
  (reconciling as { unref?: () => void }).unref?.();
  return {
    fetch: (request) => handle(request, deps),
    close: async () => {
      clearInterval(reconciling);
      await coordinator.close();
      await control.end({ timeout: 1 });
    },
  };
}
