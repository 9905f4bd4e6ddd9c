/**
 * What every start checks before it starts anything (`npm start`, `npm run start:local`,
 * `deno task start`): the settings, then the database. A bad start ends with one line naming the
 * variable and the problem — the password blanked, a hint where one helps — instead of a stack
 * trace, a hang, or a server that starts and then answers 503 for the wrong reason.
 *
 * Runtime-neutral (Node and Deno): no `process`, no `node:` imports; the caller prints the line
 * and exits.
 */
import type Postgres from "postgres";
import { intFromEnv, isLeaseError } from "../src/core/index.ts";
import { parseConnectionString, settingsFromEnv } from "../src/db/config.ts";
import { missingDriver } from "../src/db/connect.ts";
import { redact } from "../src/db/safe-error.ts";

/**
 * How long a start waits for the database to answer before it gives up, ms. Covers a refused
 * port, a host that drops packets and a server that accepts and never answers alike (postgres.js
 * `connect_timeout` runs from the socket's creation until the server is ready for queries).
 *
 * @example
 * await checkDatabase("DATABASE_URL", url, { timeoutMs: PREFLIGHT_CONNECT_TIMEOUT_MS });
 */
export const PREFLIGHT_CONNECT_TIMEOUT_MS = 5000;

/**
 * Why a start cannot go on. `code` is stable (a driver code such as `ECONNREFUSED`, a SQLSTATE
 * such as `3D000`, or `INVALID_CONFIG`); `line` is what the start prints, alone, on stderr.
 *
 * @example
 * const failure = await preflight(env, { url }); if (failure) { console.error(failure.line); exit(1); }
 */
export interface PreflightFailure {
  readonly code: string;
  /** The environment variable at fault. */
  readonly variable: string;
  /** The whole line, `leasegate: VARIABLE: problem (CODE) — hint`. Never holds a password. */
  readonly line: string;
}

/** Options of {@link preflight}. */
export interface PreflightOptions {
  /** The database the start will use; undefined when it starts one of its own (npm start's embedded PGlite). */
  url?: string | undefined;
  /** The variable `url` came from (for the line). Default `DATABASE_URL`. */
  variable?: string | undefined;
  /** Said after any database failure: where else the start could get a database. */
  hint?: string | undefined;
  /** Worker-only settings (`LEASE_SHARDS`, `LEASE_BLOCK`, `LEASE_BLOCK_IDLE_MS`) are checked always now (one parse for every path); kept for callers. */
  worker?: boolean | undefined;
  /** How long the database may take to answer, ms. Default `DB_CONNECT_TIMEOUT_MS` when set, else {@link PREFLIGHT_CONNECT_TIMEOUT_MS}. */
  timeoutMs?: number | undefined;
}

type Env = Record<string, string | undefined>;

function failure(
  variable: string,
  problem: string,
  code: string,
  hints: Array<string | undefined> = [],
): PreflightFailure {
  // "is Postgres running? unset DATABASE_URL …", "check the host name; unset DATABASE_URL …"
  const hint = hints
    .filter((h): h is string => !!h)
    .map((h, i, all) => (i < all.length - 1 && !h.endsWith("?") ? `${h};` : h))
    .join(" ");
  // One line, whatever a message held.
  const text = `leasegate: ${variable}: ${problem} (${code})${hint ? ` — ${hint}` : ""}`.replace(/\s*[\r\n]+\s*/g, " ");
  return { code, variable, line: text };
}

// A setting's error names its variable in backticks (`expected()`'s format): that is the one at
// fault, and the line names it once, up front.
function settingFailure(error: unknown, fallback: string, hints: Array<string | undefined> = []): PreflightFailure {
  if (!isLeaseError(error)) throw error;
  const variable = /`([A-Z][A-Z0-9_.]*)`/.exec(error.message)?.[1] ?? fallback;
  const named = `\`${variable}\``;
  const problem = error.message
    .replace(new RegExp(`^Expected ${named} to be `), "expected ")
    .replace(new RegExp(`^${named} (is )?`), "");
  return failure(variable, problem, error.code, hints);
}

// The embedded database's URL is known only once it runs; any well-formed URL stands in for the
// check of the other database settings.
const EMBEDDED_PLACEHOLDER = "postgres://postgres@127.0.0.1:5432/postgres";

/**
 * Validates the settings with the function every server uses (`settingsFromEnv`: LEASE_*, sharding,
 * the database layer), so a value the server would refuse is refused here first, by name.
 * Returns null when all are valid.
 *
 * @example
 * checkSettings({ LEASE_LIMIT: "abc" })?.line
 * // 'leasegate: LEASE_LIMIT: expected an integer from 1 to 10000, got `"abc"` (string) (INVALID_CONFIG)'
 */
export function checkSettings(
  env: Env,
  options: Pick<PreflightOptions, "url" | "worker"> = {},
): PreflightFailure | null {
  try {
    intFromEnv("PORT", env.PORT, 8787, 0, 65_535);
    // The one parse every path uses: LEASE_* (sharding and the lease block too) and the database's.
    settingsFromEnv({ ...env, HYPERDRIVE: undefined, DATABASE_URL: options.url ?? EMBEDDED_PLACEHOLDER });
    return null;
  } catch (error) {
    return settingFailure(error, "DATABASE_URL");
  }
}

/** The parts of a connection failure a person needs: what happened, and what to try. */
function explain(
  error: unknown,
  where: string,
  database: string,
  user: string,
  timeoutMs: number,
): { problem: string; code: string; hint?: string } {
  const code = typeof error === "object" && error !== null ? String((error as { code?: unknown }).code ?? "") : "";
  switch (code) {
    case "ECONNREFUSED":
      return { code, problem: `connection refused at ${where}`, hint: "is Postgres running?" };
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_NONAME":
      return { code, problem: `unknown host at ${where}`, hint: "check the host name" };
    case "CONNECT_TIMEOUT":
      return {
        code,
        problem: `no answer from ${where} within ${timeoutMs / 1000} s`,
        hint: "is a Postgres server listening there, and not overloaded?",
      };
    case "3D000":
      return {
        code,
        problem: `database "${database}" does not exist at ${where}`,
        hint: `create it (createdb ${database}) or name another`,
      };
    case "28P01":
      return {
        code,
        problem: `password authentication failed for user "${user}" at ${where}`,
        hint: "check the user and password",
      };
    case "28000":
      return {
        code,
        problem: `the server refused user "${user}" at ${where} (pg_hba.conf or role)`,
        hint: "check the user and the server's pg_hba.conf",
      };
    case "53300":
      return {
        code,
        problem: `too many connections at ${where}`,
        hint: "close some connections or raise max_connections",
      };
    default:
      // Anything else (TLS, a reset, a server that is not Postgres): the code, never the driver's text.
      return { code: code || "CONNECT_FAILED", problem: `cannot connect to ${where}` };
  }
}

/**
 * Parses `url` and connects once (`SELECT 1`), giving up after `timeoutMs`. Returns null when the
 * database answers; otherwise the one line saying why not.
 *
 * @example
 * const failure = await checkDatabase("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/db");
 * failure?.line // "leasegate: DATABASE_URL: connection refused at 127.0.0.1:1 (postgres://u:***@127.0.0.1:1/db) (ECONNREFUSED) — is Postgres running?"
 */
export async function checkDatabase(
  variable: string,
  url: string,
  options: { timeoutMs?: number | undefined; hint?: string | undefined } = {},
): Promise<PreflightFailure | null> {
  const timeoutMs = options.timeoutMs ?? PREFLIGHT_CONNECT_TIMEOUT_MS;
  let parsed: { url: URL; password: string };
  try {
    parsed = parseConnectionString(variable, url);
  } catch (error) {
    return settingFailure(error, variable, [options.hint]);
  }
  const secrets = parsed.password ? [parsed.password, parsed.url.password] : [];
  const shown = redact(url.trim(), secrets);
  const where = `${parsed.url.hostname}:${parsed.url.port || "5432"}`;
  const database =
    decodeURIComponent(parsed.url.pathname.slice(1)) || decodeURIComponent(parsed.url.username) || "postgres";
  const user = decodeURIComponent(parsed.url.username) || "postgres";

  let postgres: typeof Postgres;
  try {
    postgres = (await import("postgres")).default;
  } catch (error) {
    const missing = missingDriver("postgres", error);
    if (missing === error) throw error;
    return { variable, code: "INVALID_CONFIG", line: `leasegate: ${(missing as Error).message}` };
  }
  const sql = postgres(url.trim(), {
    max: 1,
    connect_timeout: timeoutMs / 1000,
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: "leasegate-preflight" },
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    // The driver's timer covers connecting; this one also covers a name lookup that never returns.
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error("preflight timed out"), { code: "CONNECT_TIMEOUT" })),
        timeoutMs + 500,
      );
    });
    await Promise.race([sql`SELECT 1`, late]);
    return null;
  } catch (error) {
    const { problem, code, hint } = explain(error, where, database, user, timeoutMs);
    return failure(variable, `${problem} (${shown})`, code, [hint, options.hint]);
  } finally {
    clearTimeout(timer);
    await sql.end({ timeout: 0 }).catch(() => {});
  }
}

/**
 * Everything a start checks, in order: the settings, then (when `url` is given) the database.
 * Null means go ahead.
 *
 * @example
 * const failure = await preflight(process.env, { url: process.env.DATABASE_URL, hint: "unset DATABASE_URL to use the embedded database" });
 * if (failure) { console.error(failure.line); process.exit(1); }
 */
export async function preflight(env: Env, options: PreflightOptions = {}): Promise<PreflightFailure | null> {
  const variable = options.variable ?? "DATABASE_URL";
  if (options.url !== undefined) {
    // A malformed URL is reported as the database's problem, with the hint, before the other settings.
    try {
      parseConnectionString(variable, options.url);
    } catch {
      return checkDatabase(variable, options.url, options);
    }
  }
  const settings = checkSettings(env, options);
  if (settings) return settings;
  if (options.url === undefined) return null;
  // Valid by now: the database layer's own connect timeout, when the operator set one.
  const configured = env.DB_CONNECT_TIMEOUT_MS?.trim();
  const timeoutMs = options.timeoutMs ?? (configured ? Number(configured) : PREFLIGHT_CONNECT_TIMEOUT_MS);
  return checkDatabase(variable, options.url, { hint: options.hint, timeoutMs });
}
