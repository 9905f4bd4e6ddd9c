import { describe, expect, it } from "vitest";
import { LeaseError } from "../../src/core/index.ts";
import { CLOSED, CircuitBreaker, type BreakerState, admit, failed, succeeded } from "../../src/db/circuit-breaker.ts";
import { databaseConfig, describeConfig, parseConnectionString } from "../../src/db/config.ts";
import { DEFAULT_RETRY, backoffMs, isRetryable, retry } from "../../src/db/retry.ts";
import { SafeMode } from "../../src/db/safe-mode.ts";
import { redact, serializeError } from "../../src/db/safe-error.ts";
import { slowQueryLog } from "../../src/db/slow-query.ts";
import { captureLog } from "./helpers.ts";

const coded = (code: string) => Object.assign(new Error(`failed with ${code}`), { code });

describe("retry policy", () => {
  it.each([
    ["ECONNREFUSED", true],
    ["ECONNRESET", true],
    ["CONNECT_TIMEOUT", true],
    ["53300", true],
    ["57P01", true],
    ["40001", true],
    ["40P01", true],
    ["08006", true],
    ["42601", false], // syntax
    ["23505", false], // unique violation
    ["23514", false], // check violation
    ["42501", false], // permission
    ["42P01", false], // undefined table
  ])("classifies %s as retryable=%s", (code, expected) => {
    expect(isRetryable(coded(code))).toBe(expected);
    // The same through the wrapper the database layer adds.
    expect(isRetryable(new LeaseError("DATABASE_ERROR", "x", { cause: coded(code) }))).toBe(expected);
  });

  it("retries an unreachable coordinator and Durable Object errors marked retryable, never overload sheds or overloaded objects", () => {
    expect(isRetryable(new LeaseError("COORDINATOR_UNAVAILABLE", "x"))).toBe(true);
    expect(isRetryable(Object.assign(new Error("Network connection lost."), { retryable: true }))).toBe(true);
    expect(
      isRetryable(Object.assign(new Error("Durable Object is overloaded."), { retryable: true, overloaded: true })),
    ).toBe(false);
    expect(isRetryable(new LeaseError("QUEUE_FULL", "x"))).toBe(false);
    expect(isRetryable(new LeaseError("ACQUIRE_TIMEOUT", "x"))).toBe(false);
    expect(isRetryable(new LeaseError("DATABASE_UNAVAILABLE", "x", { cause: { circuit: "open" } }))).toBe(false);
  });

  it("never retries a passed deadline or a lost lease, whatever their causes say", () => {
    // A lost lease's statement may have run (only the caller knows whether twice is safe); a
    // deadline has no time left. Their causes may be a reset connection or a 57P01.
    for (const code of ["DEADLINE_EXCEEDED", "LEASE_LOST"] as const)
      for (const cause of [coded("ECONNRESET"), coded("57P01"), coded("08006")])
        expect(isRetryable(new LeaseError(code, "x", { cause, executed: "maybe" }))).toBe(false);
    // A connect failure the database layer wrapped (executed: "no") is still retried, also without a code.
    expect(
      isRetryable(new LeaseError("DATABASE_UNAVAILABLE", "x", { cause: coded("ECONNREFUSED"), executed: "no" })),
    ).toBe(true);
    expect(
      isRetryable(
        new LeaseError("DATABASE_UNAVAILABLE", "x", { cause: new Error("Network connection lost."), executed: "no" }),
      ),
    ).toBe(true);
  });

  it("survives a circular cause chain", () => {
    const a: Error & { cause?: unknown } = new Error("a");
    a.cause = a;
    expect(isRetryable(a)).toBe(false);
  });

  it.each([
    // attempt, random, expected: a uniform draw below min(maxDelayMs, base · 2^(attempt-1))
    [1, 0, 0],
    [1, 0.999, 49],
    [2, 0.5, 50],
    [3, 0.5, 100],
    [5, 0.5, 400],
    [6, 0.999, 999],
    [30, 0.5, 500],
  ])("backs off with full jitter: attempt %i, random %f → %i ms", (attempt, random, ms) => {
    expect(backoffMs(attempt, DEFAULT_RETRY, random)).toBe(ms);
  });

  const runtime = (deadline: number, clock = { t: 0 }) => ({
    deadline,
    now: () => clock.t,
    random: () => 1 - Number.EPSILON,
    // Advances the injected clock instead of waiting: the loop's decisions are what is tested.
    sleep: async (ms: number) => {
      clock.t += ms;
    },
  });

  it("retries retryable failures up to maxAttempts, then throws the last one", async () => {
    let calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw coded("57P01");
        },
        { ...DEFAULT_RETRY, maxAttempts: 4 },
        runtime(1e9),
      ),
    ).rejects.toMatchObject({ code: "57P01" });
    expect(calls).toBe(4);
  });

  it("returns the first success", async () => {
    let calls = 0;
    const result = await retry(
      async () => {
        if (++calls < 3) throw coded("ECONNRESET");
        return "ok";
      },
      DEFAULT_RETRY,
      runtime(1e9),
    );
    expect(result).toBe("ok");
    expect(calls).toBe(3);
  });

  it("never retries a syntax error", async () => {
    let calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw coded("42601");
        },
        DEFAULT_RETRY,
        runtime(1e9),
      ),
    ).rejects.toMatchObject({ code: "42601" });
    expect(calls).toBe(1);
  });

  it("never waits past the deadline", async () => {
    const clock = { t: 0 };
    let calls = 0;
    // First backoff ~50 ms, second ~100 ms: with a 120 ms deadline the third attempt never starts.
    await expect(
      retry(
        async () => {
          calls++;
          throw coded("ECONNREFUSED");
        },
        { maxAttempts: 10, baseDelayMs: 50, maxDelayMs: 1000 },
        runtime(120, clock),
      ),
    ).rejects.toMatchObject({ code: "ECONNREFUSED" });
    expect(calls).toBe(2);
    expect(clock.t).toBeLessThan(120);
  });
});

describe("circuit breaker", () => {
  const options = { failureThreshold: 3, openMs: 1000 };

  it("opens after N consecutive failures, fails fast, lets one probe through half-open, closes on success", () => {
    let s: BreakerState = CLOSED;
    s = failed(s, options, 0);
    s = failed(s, options, 1);
    expect(s).toEqual({ state: "closed", failures: 2 });
    s = failed(s, options, 2);
    expect(s).toEqual({ state: "open", openedAt: 2, failures: 3 });
    expect(admit(s, options, 500)).toMatchObject({ allowed: false, retryAfterMs: 502 });
    const probe = admit(s, options, 1002);
    expect(probe).toMatchObject({ allowed: true, state: { state: "half-open", probeStartedAt: 1002 } });
    // While the probe runs, everyone else still fails fast.
    expect(admit(probe.state, options, 1003).allowed).toBe(false);
    expect(succeeded(probe.state)).toEqual(CLOSED);
  });

  it("reopens when the probe fails, and a success in between resets the count", () => {
    const open = failed({ state: "half-open", probeStartedAt: 10, failures: 3 }, options, 20);
    expect(open).toEqual({ state: "open", openedAt: 20, failures: 4 });
    expect(failed(succeeded(failed(CLOSED, options, 0)), options, 1)).toEqual({ state: "closed", failures: 1 });
  });

  it("keeps its state as plain JSON that restores into a new breaker", () => {
    let t = 0;
    const b = new CircuitBreaker("main", options, CLOSED, () => t);
    for (let i = 0; i < 3; i++) b.failed();
    const saved = JSON.parse(JSON.stringify(b)) as BreakerState & { name: string };
    expect(saved).toEqual({ name: "main", state: "open", openedAt: 0, failures: 3 });
    const { name: _name, ...state } = saved;
    const restored = new CircuitBreaker("main", options, state, () => t);
    expect(restored.admit().allowed).toBe(false);
    t = 1000;
    expect(restored.admit().allowed).toBe(true);
  });
});

describe("safe errors", () => {
  it("serializes circular references, BigInt, throwing getters and deep causes, within its byte bound", () => {
    const root = Object.assign(new Error("root"), { code: "XX000", big: 2n ** 70n }) as unknown as Record<
      string,
      unknown
    >;
    root.self = root;
    Object.defineProperty(root, "bad", {
      enumerable: true,
      get: () => {
        throw new Error("getter");
      },
    });
    let cause: unknown = root;
    for (let i = 0; i < 50; i++) cause = new Error(`level ${i} ${"x".repeat(5000)}`, { cause });
    const out = serializeError(cause, { maxBytes: 4096 });
    const text = JSON.stringify(out);
    expect(text.length).toBeLessThanOrEqual(4096);
    const shallow = serializeError(root);
    expect(shallow).toMatchObject({
      code: "XX000",
      big: "1180591620717411303424n",
      self: "[Circular]",
      bad: "[Throws]",
    });
  });

  it("bounds a single huge message", () => {
    const out = serializeError(new Error("y".repeat(1_000_000)), { maxBytes: 2048 });
    expect(JSON.stringify(out).length).toBeLessThanOrEqual(2048);
  });

  it("redacts passwords in URLs, key=value pairs and known secrets, and drops query parameters", () => {
    expect(redact("connect postgres://app:hunter2@db.example.com:5432/x failed")).toBe(
      "connect postgres://app:***@db.example.com:5432/x failed",
    );
    expect(redact("host=db password=hunter2 user=app")).toBe("host=db password=*** user=app");
    expect(redact("auth failed for s3cr3t-token", ["s3cr3t-token"])).toBe("auth failed for ***");
    const e = Object.assign(new Error("bad postgresql://u:pw123@h/db"), {
      query: "SELECT $1",
      parameters: ["card 4111"],
    });
    const text = JSON.stringify(serializeError(e));
    expect(text).not.toContain("pw123");
    expect(text).not.toContain("4111");
    expect(text).toContain("SELECT $1");
  });
});

describe("configuration", () => {
  it("picks the driver by environment", () => {
    expect(databaseConfig({ HYPERDRIVE: { connectionString: "postgres://u:p@hd.local:5432/db" } })).toMatchObject({
      environment: "edge",
      driver: "postgres",
    });
    expect(
      databaseConfig({ DATABASE_URL: "postgres://u:p@ep-cool-1.us-east-2.aws.neon.tech/db?sslmode=require" }),
    ).toMatchObject({
      environment: "production",
      driver: "neon",
    });
    expect(databaseConfig({ DATABASE_URL: "postgres://postgres@127.0.0.1:5432/db" })).toMatchObject({
      environment: "local",
      driver: "postgres",
    });
    expect(databaseConfig({ DATABASE_URL: "postgres://postgres@127.0.0.1/db", DATABASE_DRIVER: "neon" })).toMatchObject(
      { driver: "neon" },
    );
  });

  it("reads the resilience settings", () => {
    const c = databaseConfig({
      DATABASE_URL: "postgres://h/db",
      SLOW_QUERY_MS: "250",
      LEASE_SAFE_MODE: "budget",
      LEASE_SAFE_BUDGET: "3",
    });
    expect(c).toMatchObject({ slowQueryMs: 250, safeMode: { mode: "budget", budget: 3 } });
    expect(databaseConfig({ DATABASE_URL: "postgres://h/db" }).safeMode).toEqual({ mode: "closed" });
  });

  it.each([
    ["no URL", {}],
    ["not a URL", { DATABASE_URL: "postgres://app:Sup3rSecret@@ db host/x" }],
    ["another scheme", { DATABASE_URL: "mysql://app:Sup3rSecret@db/x" }],
    ["a bad port", { DATABASE_URL: "postgres://app:Sup3rSecret@db:99999/x" }],
    ["an unknown sslmode", { DATABASE_URL: "postgres://app:Sup3rSecret@db/x?sslmode=maybe" }],
    ["a password with a slash", { DATABASE_URL: "postgres://app:Sup3r/Secret@db/x" }],
    ["a malformed SLOW_QUERY_MS", { DATABASE_URL: "postgres://app:Sup3rSecret@db/x", SLOW_QUERY_MS: "fast" }],
    ["an unknown LEASE_SAFE_MODE", { DATABASE_URL: "postgres://app:Sup3rSecret@db/x", LEASE_SAFE_MODE: "open" }],
    ["a zero LEASE_SAFE_BUDGET", { DATABASE_URL: "postgres://app:Sup3rSecret@db/x", LEASE_SAFE_BUDGET: "0" }],
    ["a malformed Hyperdrive string", { HYPERDRIVE: { connectionString: "postgres//app:Sup3rSecret@db" } }],
  ])("fails with INVALID_CONFIG on %s, never echoing the password", (_name, env) => {
    let thrown: unknown;
    try {
      databaseConfig(env);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toMatchObject({ code: "INVALID_CONFIG" });
    const e = thrown as LeaseError;
    expect(e.message.length).toBeGreaterThan(10);
    expect(JSON.stringify(serializeError(e)) + e.message + String(e.stack)).not.toMatch(/Sup3r|Secret/);
    expect(e.cause).toBeUndefined();
  });

  it("describes itself without the password", () => {
    const c = databaseConfig({ DATABASE_URL: "postgres://app:Sup3rSecret@db.example.com/x" });
    expect(JSON.stringify(describeConfig(c))).not.toContain("Sup3rSecret");
    expect(parseConnectionString("X", "postgres://app:p%40ss@db/x").password).toBe("p@ss");
  });
});

describe("slow-query log and safe mode", () => {
  it("writes one JSON line per statement at or above the threshold, without parameters", () => {
    const log = captureLog();
    const slow = slowQueryLog({ thresholdMs: 100, database: "main", write: log.write });
    slow.record("SELECT 1", 99, true);
    slow.record("SELECT  *\n FROM pitches WHERE id = $1", 150, false, "GET /api/pitches/1");
    expect(log.lines).toEqual([
      {
        event: "slow_query",
        database: "main",
        query: "SELECT * FROM pitches WHERE id = $1",
        durationMs: 150,
        thresholdMs: 100,
        ok: false,
        holder: "GET /api/pitches/1",
      },
    ]);
  });

  it("fails closed, or admits a bounded local budget, only when the coordinator is unavailable", () => {
    const down = new LeaseError("COORDINATOR_UNAVAILABLE", "x");
    expect(() => new SafeMode({ mode: "closed" }).fallback(down)).toThrow(down);
    const safe = new SafeMode({ mode: "budget", budget: 2 });
    const full = new LeaseError("QUEUE_FULL", "x");
    expect(() => safe.fallback(full)).toThrow(full);
    const a = safe.fallback(down);
    safe.fallback(down);
    expect(() => safe.fallback(down)).toThrow(down);
    a();
    a(); // giving back twice frees one slot only
    expect(safe.toJSON()).toEqual({ mode: "budget", budget: 2, inUse: 1, admitted: 2, refused: 1 });
  });
});
