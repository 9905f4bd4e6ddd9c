import { LeaseError, expected, isLeaseError } from "./errors.ts";
import { type PoolConfig, QUEUE_MODES, type QueueMode } from "./types.ts";

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
 * Validates a complete pool configuration. The fixed counts (`reserved`, `batchMax`,
 * `adaptive.floor`) are checked against the bounds only, not against `limit`: a limit that moves
 * (`LEASE_LIMIT=auto`, an operator's limit) leaves them as they are, and the pool clamps them to
 * the limit in force (`reservedSlots`, the adaptive floor; a batch cap above the limit caps
 * nothing). What is configured is checked against its own limit by {@link checkCountsFit}.
 *
 * @example
 * validateConfig({ limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 30000 })
 */
export function validateConfig(config: PoolConfig): PoolConfig {
  if (typeof config !== "object" || config === null)
    throw new LeaseError(
      "INVALID_CONFIG",
      expected("config", "an object { limit, maxQueue, waitMs, leaseTtlMs }", config),
    );
  const limit = checkInt("limit", config.limit, 1, BOUNDS.limit, "INVALID_CONFIG");
  const optional = (name: string, value: number | undefined, min: number, max: number) =>
    value === undefined ? undefined : checkInt(name, value, min, max, "INVALID_CONFIG");
  const adaptive = config.adaptive;
  if (adaptive !== undefined) {
    if (typeof adaptive !== "object" || adaptive === null) {
      throw new LeaseError("INVALID_CONFIG", expected("adaptive", "an object with `floor`", adaptive));
    }
    checkInt("adaptive.floor", adaptive.floor, 1, BOUNDS.limit, "INVALID_CONFIG");
    if (adaptive.tolerance !== undefined && !(adaptive.tolerance >= 1 && adaptive.tolerance <= 10)) {
      throw new LeaseError(
        "INVALID_CONFIG",
        expected("adaptive.tolerance", "a number from 1 to 10", adaptive.tolerance),
      );
    }
  }
  const queue = config.queue;
  if (queue !== undefined && !(QUEUE_MODES as readonly unknown[]).includes(queue)) {
    throw new LeaseError("INVALID_CONFIG", expected("queue", QUEUE_MODES.map((m) => `\`${m}\``).join(" or "), queue));
  }
  return {
    limit,
    maxQueue: checkInt("maxQueue", config.maxQueue, 0, BOUNDS.maxQueue, "INVALID_CONFIG"),
    waitMs: checkInt("waitMs", config.waitMs, 0, BOUNDS.waitMs, "INVALID_CONFIG"),
    leaseTtlMs: checkInt("leaseTtlMs", config.leaseTtlMs, 1, BOUNDS.leaseTtlMs, "INVALID_CONFIG"),
    reserved: optional("reserved", config.reserved, 0, BOUNDS.limit - 1),
    batchMax: optional("batchMax", config.batchMax, 0, BOUNDS.limit),
    adaptive: adaptive === undefined ? undefined : { floor: adaptive.floor, tolerance: adaptive.tolerance },
    // Absent means the default (`DEFAULT_QUEUE_MODE`), as `LEASE_QUEUE` unset does.
    queue: queue ?? DEFAULT_QUEUE_MODE,
  };
}

/**
 * Checks that a configuration's fixed counts fit under `limit` — the configured limit, or with
 * `LEASE_LIMIT=auto` the cap `LEASE_LIMIT_MAX` (null: no cap, nothing to check): `reserved` at
 * most `limit − 1` (one slot stays for everyone), `batchMax` and `adaptive.floor` at most `limit`.
 * Fails with `INVALID_CONFIG` naming the count; answers `config`.
 *
 * @example
 * checkCountsFit({ limit: 10, maxQueue: 10, waitMs: 100, leaseTtlMs: 1000, reserved: 2 }, 10)
 */
export function checkCountsFit(config: PoolConfig, limit: number | null): PoolConfig {
  if (limit === null) return config;
  const check = (name: string, value: number | undefined, max: number) => {
    if (value !== undefined && value > max)
      throw new LeaseError(
        "INVALID_CONFIG",
        expected(name, `an integer from 0 to ${max} (the limit is ${limit})`, value),
      );
  };
  check("reserved", config.reserved, limit - 1);
  check("batchMax", config.batchMax, limit);
  check("adaptive.floor", config.adaptive?.floor, limit);
  return config;
}

/**
 * The `LEASE_*` variables (and `COORDINATOR`) a pool is configured by; values are strings, as env
 * vars are. The database's variables (`DB_*`, `DATABASE_*`) are `DatabaseEnv`'s.
 */
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
  /** `adaptive` (default): newest waiter first while a standing queue lasts, else oldest; `fifo`: oldest first, always. */
  LEASE_QUEUE?: string | undefined;
  /** `LEASE_LIMIT=auto`: slots kept free below the room the database has. */
  LEASE_HEADROOM?: string | undefined;
  /** `LEASE_LIMIT=auto`: the learned limit never exceeds this. */
  LEASE_LIMIT_MAX?: string | undefined;
  /** `LEASE_LIMIT=auto`: how often the limit is learned again, ms. */
  LEASE_LEARN_INTERVAL_MS?: string | undefined;
  /** The pool's name: one limit, one queue, one coordinator object per name. Default `main`. */
  LEASE_POOL?: string | undefined;
  /** Coordinator objects the pool's limit is split across (`${pool}#${i}`); 1 = one object named `${pool}`. */
  LEASE_SHARDS?: string | undefined;
  /** Leases an isolate may keep and hand to its own requests (batching); 0 = off. */
  LEASE_BLOCK?: string | undefined;
  /** How long a batched lease may idle in an isolate before it goes back, ms. */
  LEASE_BLOCK_IDLE_MS?: string | undefined;
  /** Where coordinator objects are created (`locationHint`, e.g. `weur`): near the database. */
  LEASE_LOCATION_HINT?: string | undefined;
  /** How long a grant from the queue lives until its holder claims it, ms; 0 = no claim. Unset: follows the measured round trip. */
  LEASE_CLAIM_MS?: string | undefined;
  /** How long a finished lease's release waits for an acquire of the isolate to carry it, ms; 0 = a call of its own. Default 5. */
  LEASE_RELEASE_CARRY_MS?: string | undefined;
  /** `off`: every acquire goes to the coordinator, even while it refuses most of them; a number from 1 to 10: the ratio `K` (the clients' `localShed`). Default `on` (K = 2). */
  LEASE_LOCAL_SHED?: string | undefined;
  /** `terminate`: leased connections carry their lease in `application_name`, and backends whose lease ended are terminated. Default `off`. */
  LEASE_ENFORCE?: string | undefined;
  /** `LEASE_ENFORCE=terminate`: how old a tagged backend with no held lease must be before reconciliation terminates it, ms. Default 2 × `LEASE_TTL_MS`. */
  LEASE_ENFORCE_GRACE_MS?: string | undefined;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string | undefined;
}

/** Every `LEASE_*` setting of a pool, parsed and validated: see {@link poolSettings}. */
export interface PoolSettings {
  /** `LEASE_POOL`: the pool's name. */
  readonly name: string;
  /** `LEASE_LIMIT`, `LEASE_MAX_QUEUE`, `LEASE_WAIT_MS`, `LEASE_TTL_MS`, `LEASE_RESERVED`, `LEASE_BATCH_MAX`, `LEASE_ADAPTIVE*`, `LEASE_QUEUE`. */
  readonly config: PoolConfig;
  /** `LEASE_SHARDS`. */
  readonly shards: number;
  /** `LEASE_BLOCK`: 0 = no batching. */
  readonly blockMax: number;
  /** `LEASE_BLOCK_IDLE_MS`. */
  readonly blockIdleMs: number;
  /** `LEASE_LOCATION_HINT`, or undefined. */
  readonly locationHint: string | undefined;
  /** `LEASE_CLAIM_MS` (the clients' `claimMs`), or undefined: the clients' default. */
  readonly claimMs: number | undefined;
  /** `LEASE_RELEASE_CARRY_MS` (the Worker's `ReleaseOutbox`); 0 = each release a call of its own. */
  readonly carryMs: number;
  /** `LEASE_LOCAL_SHED` (the clients' `localShed`): the ratio `K`, or false: off. */
  readonly localShed: number | false;
  /** False with `COORDINATOR=off`. */
  readonly coordinator: boolean;
  /** `LEASE_ENFORCE=terminate` (with `LEASE_ENFORCE_GRACE_MS`); null when off. */
  readonly enforce: EnforceSettings | null;
  /** `LEASE_LIMIT=auto`: how the limit is learned (`LEASE_HEADROOM`, `LEASE_LIMIT_MAX`, `LEASE_LEARN_INTERVAL_MS`); null for a fixed limit. */
  readonly learn: LearnSettings | null;
}

/**
 * A whole number from an environment variable, from `min` to `max`, or `fallback` when it is unset
 * or empty; anything else fails with `INVALID_CONFIG` naming the variable. The one parser of every
 * integer setting.
 *
 * @example
 * intFromEnv("LEASE_SHARDS", env.LEASE_SHARDS, 1, 1, 1024)
 */
export function intFromEnv<T extends number | undefined>(
  name: string,
  raw: string | undefined,
  fallback: T,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number | T {
  if (raw === undefined || (typeof raw === "string" && raw.trim() === "")) return fallback;
  const digits = String(raw).trim();
  const value = /^\d{1,15}$/.test(digits) ? Number(digits) : Number.NaN;
  if (!(value >= min && value <= max))
    throw new LeaseError("INVALID_CONFIG", expected(name, `an integer from ${min} to ${max}`, digits));
  return value;
}

// A variable as text: `[vars]` may hold numbers; a binding of the same name (an object) is not a setting.
function text(raw: unknown): string {
  return typeof raw === "string" ? raw.trim() : typeof raw === "number" ? String(raw) : "";
}

function oneOf<T extends string>(name: string, raw: string | undefined, choices: readonly T[], fallback: T): T {
  const value = text(raw);
  if (value === "") return fallback;
  if (!(choices as readonly string[]).includes(value))
    throw new LeaseError("INVALID_CONFIG", expected(name, choices.map((c) => `\`${c}\``).join(" or "), raw));
  return value as T;
}

/** `K` of the clients' local shed when `LEASE_LOCAL_SHED` is unset or `on` (see `LocalShed`). */
export const DEFAULT_LOCAL_SHED_RATIO = 1.5;

/**
 * `LEASE_LOCAL_SHED`: `on` (or unset) = the default ratio, `off` = false, or a ratio from 1 to 10.
 *
 * @example
 * localShedFromEnv("1.5") // 1.5
 */
export function localShedFromEnv(raw: string | undefined): number | false {
  const value = text(raw);
  if (value === "" || value === "on") return DEFAULT_LOCAL_SHED_RATIO;
  if (value === "off") return false;
  const ratio = /^\d{1,2}(\.\d{1,3})?$/.test(value) ? Number(value) : Number.NaN;
  if (!(ratio >= 1 && ratio <= 10))
    throw new LeaseError("INVALID_CONFIG", expected("LEASE_LOCAL_SHED", "`on`, `off` or a ratio from 1 to 10", raw));
  return ratio;
}

/**
 * `LEASE_QUEUE` when unset: `adaptive`. In `npm run bench:spike` (200 callers on 20 slots, half of
 * them gone after 1 s, none able to abort) it served 98.9 req/s against FIFO's 26.2 and 27.5 in the
 * same run, and callers that had gone held 0 % of the slots against 73 % and 69 % (figures in
 * docs/configuration.md). A `PoolConfig` written in code without `queue` is the same.
 */
export const DEFAULT_QUEUE_MODE: QueueMode = "adaptive";

/** The block a lease may idle in an isolate by default, ms (`LEASE_BLOCK_IDLE_MS`). */
export const DEFAULT_BLOCK_IDLE_MS = 20;

/** How long a finished lease's release waits for an acquire to carry it, ms (`LEASE_RELEASE_CARRY_MS`). */
export const DEFAULT_CARRY_MS = 5;

/**
 * Reads every `LEASE_*` variable (and `COORDINATOR`) into one validated object; a malformed value
 * fails with `INVALID_CONFIG` naming the variable. Unset ones take their defaults. To add a
 * setting: a field in {@link PoolSettings} and {@link PoolEnv}, and one line here.
 *
 * @example
 * poolSettings({ LEASE_LIMIT: "18", LEASE_SHARDS: "2" }).config.limit // 18
 */
export function poolSettings(env: PoolEnv): PoolSettings {
  const learn = learnSettingsFromEnv(env);
  const limit = learn
    ? LEARN_DEFAULTS.startLimit
    : intFromEnv("LEASE_LIMIT", env.LEASE_LIMIT, DEFAULT_CONFIG.limit, 1, BOUNDS.limit);
  // The fixed counts are checked against the limit they serve: LEASE_LIMIT, or with `auto` the
  // cap LEASE_LIMIT_MAX (no cap: the bounds). Under a learned limit they are clamped to it.
  const fits = learn ? (learn.limitMax ?? BOUNDS.limit) : limit;
  const count = <T extends number | undefined>(
    name: string,
    raw: string | undefined,
    fallback: T,
    min: number,
    max: number,
  ) => {
    try {
      return intFromEnv(name, raw, fallback, min, max);
    } catch (error) {
      if (!learn || !isLeaseError(error)) throw error;
      const why = learn.limitMax === null ? "" : `, LEASE_LIMIT_MAX being ${learn.limitMax}`;
      throw new LeaseError("INVALID_CONFIG", `${error.message} (a fixed count under LEASE_LIMIT=auto${why})`);
    }
  };
  const adaptive = oneOf("LEASE_ADAPTIVE", env.LEASE_ADAPTIVE, ["on", "off"], "off") === "on";
  const queue = oneOf<QueueMode>("LEASE_QUEUE", env.LEASE_QUEUE, QUEUE_MODES, DEFAULT_QUEUE_MODE);
  const config: PoolConfig = {
    limit,
    maxQueue: intFromEnv("LEASE_MAX_QUEUE", env.LEASE_MAX_QUEUE, DEFAULT_CONFIG.maxQueue, 0, BOUNDS.maxQueue),
    waitMs: intFromEnv("LEASE_WAIT_MS", env.LEASE_WAIT_MS, DEFAULT_CONFIG.waitMs, 0, BOUNDS.waitMs),
    leaseTtlMs: intFromEnv("LEASE_TTL_MS", env.LEASE_TTL_MS, DEFAULT_CONFIG.leaseTtlMs, 1, BOUNDS.leaseTtlMs),
    reserved: count("LEASE_RESERVED", env.LEASE_RESERVED, undefined, 0, fits - 1),
    batchMax: count("LEASE_BATCH_MAX", env.LEASE_BATCH_MAX, undefined, 0, fits),
    adaptive: adaptive
      ? {
          // Default: a quarter of the limit (with `auto`: of LEASE_LIMIT_MAX, else 1).
          floor: count(
            "LEASE_ADAPTIVE_FLOOR",
            env.LEASE_ADAPTIVE_FLOOR,
            Math.max(1, Math.floor((learn ? (learn.limitMax ?? 1) : limit) / 4)),
            1,
            fits,
          ),
        }
      : undefined,
    queue,
  };
  const name = text(env.LEASE_POOL) || "main";
  if (name.length > 200)
    throw new LeaseError("INVALID_CONFIG", expected("LEASE_POOL", "a name of at most 200 characters", name));
  return {
    name,
    config,
    // With `auto` the limit moves: the root shares whatever it learns among however many shards.
    shards: intFromEnv("LEASE_SHARDS", env.LEASE_SHARDS, 1, 1, learn ? 1024 : Math.min(1024, limit)),
    blockMax: intFromEnv("LEASE_BLOCK", env.LEASE_BLOCK, 0, 0, 1000),
    blockIdleMs: intFromEnv("LEASE_BLOCK_IDLE_MS", env.LEASE_BLOCK_IDLE_MS, DEFAULT_BLOCK_IDLE_MS, 0, 60_000),
    locationHint: text(env.LEASE_LOCATION_HINT) || undefined,
    claimMs: intFromEnv("LEASE_CLAIM_MS", env.LEASE_CLAIM_MS, undefined, 0, config.leaseTtlMs),
    carryMs: intFromEnv("LEASE_RELEASE_CARRY_MS", env.LEASE_RELEASE_CARRY_MS, DEFAULT_CARRY_MS, 0, 1000),
    localShed: localShedFromEnv(env.LEASE_LOCAL_SHED),
    // Only `off` turns leasing off: a Worker may bind its coordinator namespace under this name.
    coordinator: text(env.COORDINATOR) !== "off",
    learn,
    enforce:
      oneOf("LEASE_ENFORCE", env.LEASE_ENFORCE, ["off", "terminate"], "off") === "terminate"
        ? {
            // Two lifetimes: a connection opened for a lease granted just now may show in
            // pg_stat_activity before the lease shows in the stats read a moment earlier.
            graceMs: intFromEnv(
              "LEASE_ENFORCE_GRACE_MS",
              env.LEASE_ENFORCE_GRACE_MS,
              2 * config.leaseTtlMs,
              0,
              BOUNDS.leaseTtlMs * 2,
            ),
          }
        : null,
  };
}

/**
 * `LEASE_ENFORCE=terminate`: every leased connection carries its lease in `application_name`
 * (`${APPLICATION_NAME}/${leaseId.slice(0, 8)}`); the local adapter terminates the backends of
 * the leases it reaps, and reconciliation terminates tagged backends whose lease is no longer held.
 */
export interface EnforceSettings {
  /** A tagged backend younger than this is never terminated by reconciliation, ms. */
  readonly graceMs: number;
}

/**
 * The pool configuration part of {@link poolSettings}: `LEASE_LIMIT`, `LEASE_MAX_QUEUE`,
 * `LEASE_WAIT_MS`, `LEASE_TTL_MS`, `LEASE_RESERVED`, `LEASE_BATCH_MAX`, `LEASE_ADAPTIVE*`, `LEASE_QUEUE`.
 *
 * @example
 * configFromEnv({ LEASE_LIMIT: "18" }) // { limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 1500, queue: "adaptive" }
 */
export function configFromEnv(env: PoolEnv): PoolConfig {
  return poolSettings(env).config;
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
    headroom: intFromEnv("LEASE_HEADROOM", env.LEASE_HEADROOM, LEARN_DEFAULTS.headroom, 0, BOUNDS.limit),
    limitMax: intFromEnv("LEASE_LIMIT_MAX", env.LEASE_LIMIT_MAX, undefined, 1, BOUNDS.limit) ?? null,
    intervalMs: intFromEnv(
      "LEASE_LEARN_INTERVAL_MS",
      env.LEASE_LEARN_INTERVAL_MS,
      LEARN_DEFAULTS.intervalMs,
      100,
      60 * 60_000,
    ),
  };
  if (text(env.LEASE_LIMIT).toLowerCase() !== "auto") return null;
  return settings;
}
