/**
 * One pool as a Node or Deno app uses it, wired from env like a Worker's: a
 * {@link PostgresCoordinator} for the leases, the database layer over fresh connections (one per
 * lease, closed before the slot is given back), and the operator's controls.
 */
import type { Sql } from "postgres";
import { type LeaseClient, Leases } from "../src/client/leases.ts";
import type { ConnectionCounts } from "../src/core/index.ts";
import { LeaseError } from "../src/core/errors.ts";
import {
  type SettingsEnv,
  databaseOf,
  parseConnectionString,
  settingsFromEnv,
  withPoolApplicationName,
} from "../src/db/config.ts";
import { type DriverModule, bindDriver, loadDriver, missingDriver } from "../src/db/connect.ts";
import { Database } from "../src/db/database.ts";
import { enforceLedger } from "../src/db/enforce.ts";
import { toDatabaseError } from "../src/db/errors.ts";
import { readRoomCounts, roomReading } from "../src/db/learn-limit.ts";
import { type LeasedPool, leasedSql } from "../src/db/pool.ts";
import { controlsOf } from "../src/http/operator.ts";
import type { LeaseTracer } from "../src/tracing.ts";
import { PostgresCoordinator } from "./postgres-coordinator.ts";

/**
 * The local Postgres of the developers' and CI machines, when DATABASE_URL is unset.
 *
 * @example
 * const url = env.DATABASE_URL || DEFAULT_DATABASE_URL;
 */
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres";

/** The variables a local pool reads: the same names as a Worker's (`HYPERDRIVE` aside). */
export interface LocalPoolEnv extends Omit<SettingsEnv, "HYPERDRIVE"> {
  /**
   * Postgres itself, not through the pooler: the coordinator's tables, locks and LISTEN need a
   * session of their own. Required with `DB_POOLER=transaction`; default `DATABASE_URL`.
   */
  DATABASE_DIRECT_URL?: string | undefined;
}

/** A local pool; `close()` withdraws this process's waiters and ends the coordinator's connections. */
export interface LocalPool<Client = unknown> extends LeasedPool<Client> {
  close(): Promise<void>;
}

/**
 * The pool of this process, wired from env: `DATABASE_URL` (default: the local cluster),
 * `LEASE_*`, `DB_*`, `LEASE_POOL`, `COORDINATOR`. Ready when it resolves (tables created, listening
 * for grants); bad settings throw `INVALID_CONFIG` naming the variable. The driver is loaded by
 * `DATABASE_CLIENT` (postgres.js by default) unless `options.driver` is given; a driver package
 * that is not installed fails here with `INVALID_CONFIG` naming it. The coordinator itself always
 * uses postgres.js.
 *
 * @example
 * import { driver } from "leasegate/postgres";
 * const pool = await localPool(process.env, { driver });
 * const rows = await pool.sql((sql) => sql`SELECT 1 AS one`);
 * await pool.close();
 */
export async function localPool<Client = unknown>(
  env: LocalPoolEnv,
  options: { driver?: DriverModule<Client>; tracer?: LeaseTracer | undefined } = {},
): Promise<LocalPool<Client>> {
  const settings = settingsFromEnv(env.DATABASE_URL ? env : { ...env, DATABASE_URL: DEFAULT_DATABASE_URL });
  const { name } = settings.pool;
  // Without APPLICATION_NAME, the pool's connections carry a name of its own: a local pool is its
  // database and its pool name (every process naming both shares it).
  const config = withPoolApplicationName(
    settings.database,
    env,
    `${databaseOf(settings.database.connectionString)}/${name}`,
  );
  const { applicationName, connectionString } = config;
  const { enforce } = settings.pool;
  const direct = directUrl(env, config.pooler, settings.pool.coordinator) ?? connectionString;
  let coordinator: PostgresCoordinator | undefined;
  let control: Sql | undefined;
  const module = (options.driver ?? (await loadDriver(config))) as DriverModule<Client>;
  if (settings.pool.coordinator) {
    const postgres = await import("postgres").then(
      (m) => m.default,
      (e: unknown) => Promise.reject(missingDriver("postgres", e)),
    );
    // The coordinator's bookkeeping connections are its own, apart from the leased ones.
    control = postgres(direct, {
      max: 2,
      onnotice: () => {},
      connection: { application_name: `${applicationName}-coordinator` },
    });
    const learn = settings.pool.learn;
    coordinator = new PostgresCoordinator({
      sql: control,
      pool: name,
      config: settings.pool.config,
      learn: learn && { ...learn, applicationName },
      enforce: enforce !== null,
    });
    await coordinator.ready();
  }
  const leases: LeaseClient | undefined =
    coordinator &&
    new Leases(coordinator, {
      pool: name,
      claimMs: settings.pool.claimMs,
      localShed: settings.pool.localShed,
      tracer: options.tracer,
    });
  // Reconciliation's counts; with LEASE_ENFORCE=terminate it also terminates the tagged backends
  // whose lease is no longer held (the held leases read first: see `enforceLedger`).
  const observe = async (c: PostgresCoordinator, sql: Sql): Promise<ConnectionCounts> => {
    const held = enforce ? await c.stats() : undefined;
    const counts = await c.countConnections(applicationName, config.pooler);
    if (!enforce || !held) return counts;
    return { ...counts, terminated: await enforceLedger(sql, applicationName, [held], enforce.graceMs) };
  };
  const driver = bindDriver(module, config);
  const db = new Database({ name, driver, leases, config, tagLeases: enforce !== null });
  return {
    name,
    leases,
    db,
    // The reconciliation's database errors answer as `LeaseError`s, as every other failure does.
    operator:
      coordinator &&
      controlsOf(
        coordinator,
        () => observe(coordinator, control!).catch((e: unknown) => Promise.reject(toDatabaseError(e))),
        settings.pool.learn
          ? () => roomReading(() => readRoomCounts(control!, applicationName, settings.pool.learn!.intervalMs))
          : undefined,
      ),
    sql: leasedSql(db, driver),
    close: async () => {
      await coordinator?.close();
      await control?.end({ timeout: 1 });
    },
  };
}

/**
 * `DATABASE_DIRECT_URL`, checked: behind a transaction-mode pooler the coordinator's LISTEN
 * connection would be handed to other clients between transactions, so it is required there.
 */
function directUrl(env: LocalPoolEnv, pooler: "none" | "transaction", coordinator: boolean): string | undefined {
  const raw = env.DATABASE_DIRECT_URL?.trim();
  if (raw) return parseConnectionString("DATABASE_DIRECT_URL", raw) && raw;
  if (pooler === "transaction" && coordinator) {
    throw new LeaseError(
      "INVALID_CONFIG",
      "`DB_POOLER=transaction` needs `DATABASE_DIRECT_URL`: the local coordinator keeps a session (LISTEN, its tables) that a transaction-mode pooler would hand to other clients. Set it to Postgres itself, not the pooler.",
    );
  }
  return undefined;
}
