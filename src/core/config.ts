import { LeaseError, expected } from "./errors.ts";

/** The limits of one pool. All durations are milliseconds. */
export interface PoolConfig {
  /** Slots in the pool: leases held at once never exceed it. */
  readonly limit: number;
  /** Waiters beyond this are shed at once with `QUEUE_FULL`. */
  readonly maxQueue: number;
  /** Default queue deadline of an acquire that names none. */
  readonly waitMs: number;
  /** Lease lifetime without renewal. */
  readonly leaseTtlMs: number;
}

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
  leaseTtlMs: 30_000,
};

/**
 * Checks that `value` is an integer in `[min, max]` and returns it; throws `INVALID_ARGUMENT`
 * (or `code`) with a message naming what was expected and what came.
 *
 * @example
 * checkInt("limit", 10, 1, 10_000) // 10
 */
export function checkInt(
  name: string,
  value: unknown,
  min: number,
  max: number,
  code: "INVALID_ARGUMENT" | "INVALID_CONFIG" = "INVALID_ARGUMENT",
): number {
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
  return {
    limit: checkInt("limit", config.limit, 1, BOUNDS.limit, "INVALID_CONFIG"),
    maxQueue: checkInt("maxQueue", config.maxQueue, 0, BOUNDS.maxQueue, "INVALID_CONFIG"),
    waitMs: checkInt("waitMs", config.waitMs, 0, BOUNDS.waitMs, "INVALID_CONFIG"),
    leaseTtlMs: checkInt("leaseTtlMs", config.leaseTtlMs, 1, BOUNDS.leaseTtlMs, "INVALID_CONFIG"),
  };
}

/** The environment variables a pool is configured by; values are strings, as env vars are. */
export interface PoolEnv {
  LEASE_LIMIT?: string | undefined;
  LEASE_MAX_QUEUE?: string | undefined;
  LEASE_WAIT_MS?: string | undefined;
  LEASE_TTL_MS?: string | undefined;
}

function intFromEnv(name: string, raw: string | undefined, fallback: number): number {
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
 * configFromEnv({ LEASE_LIMIT: "18" }) // { limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 30000 }
 */
export function configFromEnv(env: PoolEnv): PoolConfig {
  const config = {
    limit: intFromEnv("LEASE_LIMIT", env.LEASE_LIMIT, DEFAULT_CONFIG.limit),
    maxQueue: intFromEnv("LEASE_MAX_QUEUE", env.LEASE_MAX_QUEUE, DEFAULT_CONFIG.maxQueue),
    waitMs: intFromEnv("LEASE_WAIT_MS", env.LEASE_WAIT_MS, DEFAULT_CONFIG.waitMs),
    leaseTtlMs: intFromEnv("LEASE_TTL_MS", env.LEASE_TTL_MS, DEFAULT_CONFIG.leaseTtlMs),
  };
  try {
    return validateConfig(config);
  } catch (error) {
    // Name the variable the operator set, not the internal field.
    const names: Record<string, string> = {
      limit: "LEASE_LIMIT",
      maxQueue: "LEASE_MAX_QUEUE",
      waitMs: "LEASE_WAIT_MS",
      leaseTtlMs: "LEASE_TTL_MS",
    };
    const message = (error as Error).message.replace(/`(\w+)`/, (m, field: string) => `\`${names[field] ?? field}\``);
    throw new LeaseError("INVALID_CONFIG", message);
  }
}
