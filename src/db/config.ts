import { type PoolEnv, type PoolSettings, LeaseError, expected, intFromEnv, poolSettings } from "../core/index.ts";
import { DEFAULT_BREAKER, type BreakerOptions } from "./circuit-breaker.ts";
import { DRIVER_PACKAGES, MAX_TAGGED_APPLICATION_NAME, isDriverName } from "./driver.ts";
import { DEFAULT_RETRY, type RetryOptions } from "./retry.ts";
import { DEFAULT_RETRY_BUDGET, type RetryBudgetOptions } from "./retry-budget.ts";
import type { SafeModeOptions } from "./safe-mode.ts";
import { redact } from "./safe-error.ts";

/**
 * Where the code runs: `edge` (a Worker with a Hyperdrive binding), `production` (a Neon URL, or
 * `DATABASE_DRIVER=neon`, without Hyperdrive), `local` (any other Postgres URL). `driver` names the
 * driver Node, Deno and Bun load (`DATABASE_CLIENT`: `postgres` by default, `neon` for a Neon
 * URL); a Worker uses the driver it passes to `workerPool`.
 */
export type DatabaseConfig = {
  readonly environment: "edge" | "production" | "local";
  /** One of leasegate's drivers by name (`postgres`, `pg`, `neon`, `bun`): see `DRIVER_PACKAGES`. */
  readonly driver: string;
  /** Never log this: it holds the password. Use {@link describeConfig}. */
  readonly connectionString: string;
  /** The password alone, so logs can blank it wherever it appears. */
  readonly secrets: readonly string[];
  readonly applicationName: string;
  readonly connectTimeoutMs: number;
  readonly slowQueryMs: number;
  readonly safeMode: SafeModeOptions;
  readonly retry: RetryOptions;
  readonly breaker: BreakerOptions;
  /**
   * `DB_RETRY_BUDGET`: `on` (default) refuses retries locally as attempts keep failing (see
   * `RetryBudget`); `off` (null) retries every retryable failure up to `retry.maxAttempts`.
   */
  readonly retryBudget: RetryBudgetOptions | null;
  /** A request's whole budget for database work, retries included, ms. */
  readonly deadlineMs: number;
  /** `DB_LOG_DETAIL=on`: error and slow-query logs keep messages, row values and query literals. */
  readonly logDetail: boolean;
  /**
   * `DB_STATEMENT_TIMEOUT`: `startup` (default) opens every leased connection with
   * `statement_timeout` and `idle_in_transaction_session_timeout` set to what is left of the
   * request's deadline, and `client_connection_check_interval` (100 ms), as startup parameters;
   * `off` sends none (Postgres < 14, or a pooler that refuses unknown startup parameters).
   */
  readonly statementTimeout: "startup" | "off";
  /**
   * `DB_CONNECTION_CHECK_MS`: with `statementTimeout` `startup`, the `client_connection_check_interval`
   * leased connections start with, ms (Postgres ≥ 14 on a platform that has it); `0` sends none.
   */
  readonly connectionCheckMs: number;
  /**
   * `DB_POOLER`: `transaction` when `DATABASE_URL` (or Hyperdrive) reaches Postgres through a
   * transaction-mode pooler (PgBouncer, Supavisor, Hyperdrive in production): a lease then bounds
   * the transactions in flight, and reconciliation counts the server connections in a transaction.
   * Default `none`. See docs/poolers.md.
   */
  readonly pooler: "none" | "transaction";
};

/** The variables the database layer reads. Values are strings, as environment variables are. */
export interface DatabaseEnv {
  HYPERDRIVE?: { connectionString: string } | undefined;
  DATABASE_URL?: string | undefined;
  /** `neon` or `postgres`: overrides the choice by host name (for a Neon-compatible proxy). */
  DATABASE_DRIVER?: string | undefined;
  /** The driver Node, Deno and Bun load: `postgres` (postgres.js, the default), `pg`, `neon` or `bun`. */
  DATABASE_CLIENT?: string | undefined;
  APPLICATION_NAME?: string | undefined;
  DB_CONNECT_TIMEOUT_MS?: string | undefined;
  DB_DEADLINE_MS?: string | undefined;
  SLOW_QUERY_MS?: string | undefined;
  LEASE_SAFE_MODE?: string | undefined;
  LEASE_SAFE_BUDGET?: string | undefined;
  /** `on`: logs keep database error messages and query literals (they may hold row data). Default `off`. */
  DB_LOG_DETAIL?: string | undefined;
  /** `startup` (default) or `off`: whether leased connections start with the deadline's `statement_timeout`. */
  DB_STATEMENT_TIMEOUT?: string | undefined;
  /** `client_connection_check_interval` of leased connections, ms; `0` sends none. Default 100. */
  DB_CONNECTION_CHECK_MS?: string | undefined;
  /** `on` (default) or `off`: the per-isolate retry budget. */
  DB_RETRY_BUDGET?: string | undefined;
  /** `none` (default) or `transaction`: the database is reached through a transaction-mode pooler. */
  DB_POOLER?: string | undefined;
}

function invalid(message: string): never {
  throw new LeaseError("INVALID_CONFIG", message);
}

function int(env: DatabaseEnv, name: keyof DatabaseEnv, fallback: number, min: number, max: number): number {
  return intFromEnv(name, env[name] as string | undefined, fallback, min, max);
}

/**
 * Parses a Postgres connection string. A malformed one fails with `INVALID_CONFIG` and a message
 * that names the problem and shows the string with its password blanked — never the password,
 * not even inside a `cause` (the URL parser's own error quotes its input, so it is dropped).
 *
 * @example
 * parseConnectionString("DATABASE_URL", "postgres://app:s3cret@db.example.com/app").password // "s3cret"
 */
export function parseConnectionString(name: string, raw: string): { url: URL; password: string } {
  const text = raw.trim();
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    invalid(`\`${name}\` is not a valid URL: ${shown(text)}`);
  }
  const password = decodeURIComponent(url.password);
  const secrets = password ? [password, url.password] : [];
  const fail = (what: string): never => invalid(`\`${name}\` ${what}: ${shown(text, secrets)}`);
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:")
    fail("must start with postgres:// or postgresql://");
  if (!url.hostname) fail("names no host");
  if (url.port && !(Number(url.port) >= 1 && Number(url.port) <= 65535)) fail("has an invalid port");
  if (url.pathname.length > 64) fail("names a database longer than 63 characters");
  const sslmode = url.searchParams.get("sslmode");
  if (
    sslmode !== null &&
    !["disable", "allow", "prefer", "require", "verify-ca", "verify-full", "no-verify"].includes(sslmode)
  ) {
    fail(`has an unknown sslmode \`${sslmode.slice(0, 20)}\``);
  }
  return { url, password };
}

// A connection string as it may appear in a message: credentials blanked, length bounded.
function shown(text: string, secrets: readonly string[] = []): string {
  // Credentials sit before the last "@": blank all of that, keeping a recognizable scheme, so even
  // a string too malformed to parse (`postgres//u:p@h`) cannot leak its password.
  const at = text.lastIndexOf("@");
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(text)?.[0] ?? "";
  const blanked = redact(at >= 0 ? `${scheme}***${text.slice(at)}` : text, secrets);
  const result = blanked.length > 120 ? `${blanked.slice(0, 120)}…` : blanked;
  return `\`${result}\``;
}

/**
 * Reads and validates the database configuration once, at start: the environment, the driver,
 * timeouts, slow-query threshold and safe mode. Every malformed value fails with `INVALID_CONFIG`
 * naming the variable.
 *
 * @example
 * const config = databaseConfig({ DATABASE_URL: "postgres://postgres@127.0.0.1:5432/app", SLOW_QUERY_MS: "200" });
 * config.driver // "postgres"
 */
export function databaseConfig(env: DatabaseEnv): DatabaseConfig {
  const connectTimeoutMs = int(env, "DB_CONNECT_TIMEOUT_MS", 5000, 100, 120_000);
  const deadlineMs = int(env, "DB_DEADLINE_MS", 10_000, 100, 600_000);
  const slowQueryMs = int(env, "SLOW_QUERY_MS", 500, 0, 3_600_000);
  const budget = int(env, "LEASE_SAFE_BUDGET", 2, 1, 10_000);
  const mode = (env.LEASE_SAFE_MODE ?? "").trim() || "closed";
  if (mode !== "closed" && mode !== "budget") invalid(expected("LEASE_SAFE_MODE", "`closed` or `budget`", mode));
  const safeMode: SafeModeOptions = mode === "budget" ? { mode: "budget", budget } : { mode: "closed" };
  const applicationName = (env.APPLICATION_NAME ?? "").trim() || "leasegate";
  if (applicationName.length > 63) invalid(expected("APPLICATION_NAME", "at most 63 characters", applicationName));
  const detail = (env.DB_LOG_DETAIL ?? "").trim() || "off";
  if (detail !== "on" && detail !== "off") invalid(expected("DB_LOG_DETAIL", "`on` or `off`", detail));
  const statementTimeout = (env.DB_STATEMENT_TIMEOUT ?? "").trim() || "startup";
  if (statementTimeout !== "startup" && statementTimeout !== "off")
    invalid(expected("DB_STATEMENT_TIMEOUT", "`startup` or `off`", statementTimeout));
  const connectionCheckMs = int(env, "DB_CONNECTION_CHECK_MS", 100, 0, 60_000);
  const retryBudget = (env.DB_RETRY_BUDGET ?? "").trim() || "on";
  if (retryBudget !== "on" && retryBudget !== "off") invalid(expected("DB_RETRY_BUDGET", "`on` or `off`", retryBudget));
  const pooler = (env.DB_POOLER ?? "").trim() || "none";
  if (pooler !== "none" && pooler !== "transaction") invalid(expected("DB_POOLER", "`none` or `transaction`", pooler));
  const common = {
    pooler: pooler as DatabaseConfig["pooler"],
    retryBudget: retryBudget === "on" ? DEFAULT_RETRY_BUDGET : null,
    statementTimeout: statementTimeout as DatabaseConfig["statementTimeout"],
    connectionCheckMs,
    logDetail: detail === "on",
    applicationName,
    connectTimeoutMs,
    slowQueryMs,
    safeMode,
    deadlineMs,
    retry: DEFAULT_RETRY,
    breaker: DEFAULT_BREAKER,
  };

  const forced = (env.DATABASE_DRIVER ?? "").trim();
  if (forced !== "" && forced !== "neon" && forced !== "postgres")
    invalid(expected("DATABASE_DRIVER", "`neon` or `postgres`", forced));
  const client = (env.DATABASE_CLIENT ?? "").trim();
  if (client !== "" && !isDriverName(client))
    invalid(expected("DATABASE_CLIENT", `one of \`${Object.keys(DRIVER_PACKAGES).join("`, `")}\``, client));

  if (env.HYPERDRIVE && typeof env.HYPERDRIVE.connectionString === "string") {
    const { password } = parseConnectionString("HYPERDRIVE.connectionString", env.HYPERDRIVE.connectionString);
    return {
      ...common,
      environment: "edge",
      driver: client || "postgres",
      connectionString: env.HYPERDRIVE.connectionString,
      secrets: password ? [password] : [],
    };
  }
  const raw = env.DATABASE_URL;
  if (raw === undefined || raw.trim() === "")
    invalid("Set `DATABASE_URL` (or bind `HYPERDRIVE` on Workers): no database is configured");
  const { url, password } = parseConnectionString("DATABASE_URL", raw);
  const neon = forced === "neon" || (forced === "" && /\.neon\.tech$/i.test(url.hostname));
  // Neon's driver is its own (WebSocket) client: another client choice there would be silently ignored.
  if (neon && client !== "" && client !== "neon") {
    invalid(
      `\`DATABASE_CLIENT\` applies to Hyperdrive and plain Postgres, not to the Neon driver (chosen by ${forced === "neon" ? "`DATABASE_DRIVER=neon`" : "the *.neon.tech host"}): unset it, or set \`DATABASE_DRIVER=postgres\` to reach Neon over TCP`,
    );
  }
  return {
    ...common,
    environment: neon ? "production" : "local",
    driver: neon ? "neon" : client || "postgres",
    connectionString: raw.trim(),
    secrets: password ? [password] : [],
  };
}

/**
 * The configuration as it may be logged or shown: the connection string with its password blanked.
 *
 * @example
 * console.log(describeConfig(config)); // { environment: "local", driver: "postgres", database: "postgres://app:***@…" }
 */
export function describeConfig(config: DatabaseConfig): Record<string, unknown> {
  const { connectionString, secrets, ...rest } = config;
  return { ...rest, database: redact(connectionString, secrets) };
}

/** Every variable a pool is wired from: `LEASE_*`, `COORDINATOR`, and the database's. */
export interface SettingsEnv extends PoolEnv, DatabaseEnv {}

/** Everything a pool is wired from, parsed and validated once: see {@link settingsFromEnv}. */
export interface Settings {
  /** `LEASE_*` and `COORDINATOR`. */
  readonly pool: PoolSettings;
  /** `DATABASE_*`, `HYPERDRIVE`, `DB_*`, `SLOW_QUERY_MS`, `LEASE_SAFE_*`, `APPLICATION_NAME`. */
  readonly database: DatabaseConfig;
}

const parsed = new WeakMap<object, Settings>();

/**
 * Reads every variable a pool is wired from into one typed, validated object: once per env object
 * (a Worker's `env` lives as long as its isolate; a process's `process.env` as long as it), so a
 * request pays a lookup, not a parse. Every malformed value fails with `INVALID_CONFIG` naming the
 * variable. `workerPool`, `localPool` and the start-up checks all read their settings here.
 *
 * @example
 * const { pool, database } = settingsFromEnv(env);
 * pool.config.limit; database.connectTimeoutMs;
 */
export function settingsFromEnv(env: SettingsEnv): Settings {
  let settings = parsed.get(env);
  if (!settings) {
    settings = { pool: poolSettings(env), database: databaseConfig(env) };
    // A lease tag must fit Postgres's 63 bytes: an untagged connection could not be enforced.
    const name = settings.database.applicationName;
    if (settings.pool.enforce && new TextEncoder().encode(name).length > MAX_TAGGED_APPLICATION_NAME) {
      invalid(
        expected(
          "APPLICATION_NAME",
          `at most ${MAX_TAGGED_APPLICATION_NAME} bytes with LEASE_ENFORCE=terminate (the lease tag takes 9 of Postgres's 63)`,
          name,
        ),
      );
    }
    if (settings.database.pooler === "transaction") checkPooled(settings.pool);
    parsed.set(env, settings);
  }
  return settings;
}

/**
 * Behind a transaction-mode pooler, `pg_stat_activity` shows the pooler's server connections, and
 * a server backend serves whichever client's transaction comes next: what cannot mean the same
 * there is refused, with what to set instead (docs/poolers.md).
 */
function checkPooled(pool: PoolSettings): void {
  if (pool.learn && pool.learn.limitMax === null) {
    invalid(
      "`LEASE_LIMIT=auto` with `DB_POOLER=transaction` needs `LEASE_LIMIT_MAX` set to the pooler's server connections for this database and role (PgBouncer `default_pool_size`, Supavisor's pool size, Hyperdrive's origin connection limit): the database cannot show the pooler's own bound. Or set `LEASE_LIMIT` to a number.",
    );
  }
  if (pool.enforce) {
    invalid(
      "`LEASE_ENFORCE=terminate` cannot be combined with `DB_POOLER=transaction`: a pooler's server backend carries other clients' transactions, so terminating it ends work a lease pays for. Unset `LEASE_ENFORCE`.",
    );
  }
}
