import { LeaseError, expected } from "./errors.ts";
import type { PoolConfig } from "./types.ts";

/** Upper bounds that keep a single bad setting or request from pinning the coordinator. */
export const BOUNDS = {
  limit: 10_000,
  maxQueue: 1_000_000,
  waitMs: 10 * 60_000,
  leaseTtlMs: 24 * 60 * 60_000,
} as const;

export const DEFAULT_CONFIG: PoolConfig = {
  limit: 10,
  maxQueue: 1000,
  waitMs: 5000,
  // Short on purpose: a holder renews while alive (the client's heartbeat, every third of it: 500
  // ms, so a request shorter than that makes no extra call), and a caller that vanishes — a
  // cancelled Worker request runs no `finally` — holds its slot at most this long after its last
  // beat. With the client's 500 ms claim window for a waiter that vanished, holders and waiters
  // that vanish together are all back within 2 s. See docs/reliability.md, "Callers that vanish".
  leaseTtlMs: 1500,
};

/**
 * Checks that `value` is an integer in `[min, max]` and returns it; throws `INVALID_ARGUMENT`
 * (or `code`) with a message naming what was expected and what came.
 *
 * @example
 * checkInt("limit", 10, 1, 10_000) // 10
 */
export function checkInt(name: string, value: unknown, min: number, max: number, code: "INVALID_ARGUMENT" | "INVALID_CONFIG" = "INVALID_ARGUMENT"): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new LeaseError(code, expected(name, `an integer from ${min} to ${max}`, value));
  }
  return value;
}

/**
 * Validates a complete pool configuration.
 *
 * @example
 * validateConfig({ limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 30000 })
 */
export function validateConfig(config: PoolConfig): PoolConfig {
  const limit = checkInt("limit", config.limit, 1, BOUNDS.limit, "INVALID_CONFIG");
  const optional = (name: string, value: number | undefined, min: number, max: number) =>
    value === undefined ? undefined : checkInt(name, value, min, max, "INVALID_CONFIG");
  const adaptive = config.adaptive;
  if (adaptive !== undefined) {
    if (typeof adaptive !== "object" || adaptive === null) {
      throw new LeaseError("INVALID_CONFIG", expected("adaptive", "an object with `floor`", adaptive));
    }
    checkInt("adaptive.floor", adaptive.floor, 1, limit, "INVALID_CONFIG");
    if (adaptive.tolerance !== undefined && !(adaptive.tolerance >= 1 && adaptive.tolerance <= 10)) {
      throw new LeaseError("INVALID_CONFIG", expected("adaptive.tolerance", "a number from 1 to 10", adaptive.tolerance));
    }
  }
  return {
    limit,
    maxQueue: checkInt("maxQueue", config.maxQueue, 0, BOUNDS.maxQueue, "INVALID_CONFIG"),
    waitMs: checkInt("waitMs", config.waitMs, 0, BOUNDS.waitMs, "INVALID_CONFIG"),
    leaseTtlMs: checkInt("leaseTtlMs", config.leaseTtlMs, 1, BOUNDS.leaseTtlMs, "INVALID_CONFIG"),
    reserved: optional("reserved", config.reserved, 0, limit - 1),
    batchMax: optional("batchMax", config.batchMax, 0, limit),
    adaptive: adaptive === undefined ? undefined : { floor: adaptive.floor, tolerance: adaptive.tolerance },
  };
}

/** The environment variables a pool is configured by; values are strings, as env vars are. */
export interface PoolEnv {
  LEASE_LIMIT?: string | undefined;
  LEASE_MAX_QUEUE?: string | undefined;
  LEASE_WAIT_MS?: string | undefined;
  LEASE_TTL_MS?: string | undefined;
  LEASE_RESERVED?: string | undefined;
  LEASE_BATCH_MAX?: string | undefined;
  /** `on` moves the limit by observed hold times; `off` (default) keeps it fixed. */
  LEASE_ADAPTIVE?: string | undefined;
  LEASE_ADAPTIVE_FLOOR?: string | undefined;
  /** With `LEASE_LIMIT=auto`: slots kept free below the room the database has. */
  LEASE_HEADROOM?: string | undefined;
  /** With `LEASE_LIMIT=auto`: the learned limit never exceeds this. */
  LEASE_LIMIT_MAX?: string | undefined;
  /** With `LEASE_LIMIT=auto`: how often the limit is learned again, ms. */
  LEASE_LEARN_INTERVAL_MS?: string | undefined;
}

/**
 * A whole number from an environment variable, or `fallback` when it is unset or empty; anything
 * else fails with `INVALID_CONFIG` naming the variable.
 *
 * @example
 * intFromEnv("LEASE_SHARDS", env.LEASE_SHARDS, 1)
 */
export function intFromEnv<T extends number | undefined>(name: string, raw: string | undefined, fallback: T): number | T {
  if (raw === undefined || raw.trim() === "") return fallback;
  const trimmed = raw.trim();
  if (!/^\d+$/.test(trimmed)) throw new LeaseError("INVALID_CONFIG", expected(name, "a whole number", raw));
  return Number(trimmed);
}

/**
 * Reads `LEASE_LIMIT`, `LEASE_MAX_QUEUE`, `LEASE_WAIT_MS` and `LEASE_TTL_MS`, falling back to the
 * defaults for unset ones; a malformed value fails with `INVALID_CONFIG` naming the variable.
 *
 * @example
 * configFromEnv({ LEASE_LIMIT: "18" }) // { limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 1500 }
 */
export function configFromEnv(env: PoolEnv): PoolConfig {
  const auto = isAutoLimit(env);
  const config = {
    limit: auto ? LEARN_DEFAULTS.startLimit : intFromEnv("LEASE_LIMIT", env.LEASE_LIMIT, DEFAULT_CONFIG.limit),
    maxQueue: intFromEnv("LEASE_MAX_QUEUE", env.LEASE_MAX_QUEUE, DEFAULT_CONFIG.maxQueue),
    waitMs: intFromEnv("LEASE_WAIT_MS", env.LEASE_WAIT_MS, DEFAULT_CONFIG.waitMs),
    leaseTtlMs: intFromEnv("LEASE_TTL_MS", env.LEASE_TTL_MS, DEFAULT_CONFIG.leaseTtlMs),
    reserved: intFromEnv("LEASE_RESERVED", env.LEASE_RESERVED, undefined),
    batchMax: intFromEnv("LEASE_BATCH_MAX", env.LEASE_BATCH_MAX, undefined),
    adaptive: undefined as PoolConfig["adaptive"],
  };
  const mode = (env.LEASE_ADAPTIVE ?? "off").trim();
  if (mode !== "on" && mode !== "off") throw new LeaseError("INVALID_CONFIG", expected("LEASE_ADAPTIVE", "`on` or `off`", env.LEASE_ADAPTIVE));
  if (mode === "on") {
    const fallback = Math.max(1, Math.floor(config.limit / 4));
    config.adaptive = { floor: intFromEnv("LEASE_ADAPTIVE_FLOOR", env.LEASE_ADAPTIVE_FLOOR, fallback) };
  }
  if (auto) checkAutoCompatible(config);
  try {
    return validateConfig(config);
  } catch (error) {
    // Name the variable the operator set, not the internal field.
    const names: Record<string, string> = {
      reserved: "LEASE_RESERVED",
      batchMax: "LEASE_BATCH_MAX",
      "adaptive.floor": "LEASE_ADAPTIVE_FLOOR",
      limit: "LEASE_LIMIT",
      maxQueue: "LEASE_MAX_QUEUE",
      waitMs: "LEASE_WAIT_MS",
      leaseTtlMs: "LEASE_TTL_MS",
    };
    const message = (error as Error).message.replace(/`([\w.]+)`/, (_, field: string) => `\`${names[field] ?? field}\``);
    throw new LeaseError("INVALID_CONFIG", message);
  }
}

// ── LEASE_LIMIT=auto: the limit learned from the database (src/core/room.ts does the arithmetic). ──

/** How a pool with `LEASE_LIMIT=auto` learns its limit. */
export interface LearnSettings {
  /** Slots kept free below the room the database has. */
  readonly headroom: number;
  /** The learned limit never exceeds this; null: no cap. */
  readonly limitMax: number | null;
  /** How often the limit is learned again, ms. */
  readonly intervalMs: number;
}

export const LEARN_DEFAULTS = {
  // Two slots: one for a connection that arrives between two learnings (an admin's psql, a cron
  // job), one for a lease's connection whose backend is still exiting when the next lease's
  // connection arrives (Postgres counts a backend until its process is gone).
  headroom: 2,
  // Others' connections change at the pace of deploys, cron jobs and admin sessions: ten seconds
  // sees them soon enough with the headroom covering the gap, and one short query per pool every
  // ten seconds costs the database nothing.
  intervalMs: 10_000,
  // Before the first learning: a limit that cannot overrun any database with room for one
  // connection. It lasts one query's time (the first learning runs at start, or on the first request).
  startLimit: 1,
} as const;

/** `LEASE_LIMIT=auto` (any case, spaces around it ignored). */
function isAutoLimit(env: PoolEnv): boolean {
  return env.LEASE_LIMIT?.trim().toLowerCase() === "auto";
}

/** Fixed slot counts cannot follow a limit that moves: they are refused with `auto`. */
function checkAutoCompatible(config: { reserved: number | undefined; batchMax: number | undefined; adaptive: PoolConfig["adaptive"] }): void {
  for (const [name, set] of [
    ["LEASE_RESERVED", config.reserved !== undefined],
    ["LEASE_BATCH_MAX", config.batchMax !== undefined],
    ["LEASE_ADAPTIVE", config.adaptive !== undefined],
  ] as const) {
    if (set) throw new LeaseError("INVALID_CONFIG", `\`${name}\` cannot be combined with \`LEASE_LIMIT=auto\` (the learned limit moves; ${name} is fixed)`);
  }
}

/**
 * The learning settings of a pool with `LEASE_LIMIT=auto`, or null for a fixed limit.
 * `LEASE_HEADROOM` (default 2), `LEASE_LIMIT_MAX` (default none), `LEASE_LEARN_INTERVAL_MS`
 * (default 10000) are checked either way; a malformed one fails with `INVALID_CONFIG`.
 *
 * @example
 * learnSettingsFromEnv({ LEASE_LIMIT: "auto", LEASE_LIMIT_MAX: "50" }) // { headroom: 2, limitMax: 50, intervalMs: 10000 }
 */
export function learnSettingsFromEnv(env: PoolEnv): LearnSettings | null {
  const settings: LearnSettings = {
    headroom: checkInt("LEASE_HEADROOM", intFromEnv("LEASE_HEADROOM", env.LEASE_HEADROOM, LEARN_DEFAULTS.headroom), 0, BOUNDS.limit, "INVALID_CONFIG"),
    limitMax: env.LEASE_LIMIT_MAX?.trim()
      ? checkInt("LEASE_LIMIT_MAX", intFromEnv("LEASE_LIMIT_MAX", env.LEASE_LIMIT_MAX, 0), 1, BOUNDS.limit, "INVALID_CONFIG")
      : null,
    intervalMs: checkInt(
      "LEASE_LEARN_INTERVAL_MS",
      intFromEnv("LEASE_LEARN_INTERVAL_MS", env.LEASE_LEARN_INTERVAL_MS, LEARN_DEFAULTS.intervalMs),
      100,
      60 * 60_000,
      "INVALID_CONFIG",
    ),
  };
  return isAutoLimit(env) ? settings : null;
}
