/**
 * The retry budget (client-side adaptive throttling), retries that never repeat a statement that may
 * have run, and overload answers that never trip the breaker. The math runs as tables on an injected
 * clock; the storms run against the real Postgres with a role whose `CONNECTION LIMIT` is 0.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { LeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import type { Driver } from "../../src/db/driver.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";
import { DEFAULT_RETRY_BUDGET, RetryBudget, outcomeOf, refusalChance } from "../../src/db/retry-budget.ts";
import { isRetryable } from "../../src/db/retry.ts";
import { TEST_URL, captureLog, memoryCoordinator } from "./helpers.ts";

const db = new URL(TEST_URL);
const dbName = db.pathname.slice(1);
// A role the server turns away at every connect ("too many connections for role", 53300): a real
// database that is down for this client, reached in a millisecond.
const REFUSED_ROLE = `${dbName}_refused`;
const refusedUrl = Object.assign(new URL(TEST_URL), { username: REFUSED_ROLE }).toString();
const admin = postgres(TEST_URL, { max: 2, onnotice: () => {} });

beforeAll(async () => {
  await admin.unsafe(
    `DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${REFUSED_ROLE}') THEN
         CREATE ROLE "${REFUSED_ROLE}" LOGIN CONNECTION LIMIT 0;
       END IF;
     END $$`,
  );
});
afterAll(() => admin.end());

const rt = { now: 0, random: 0.5 };
const clock = { now: () => rt.now, random: () => rt.random };

describe("retry budget math (injected clock)", () => {
  it.each([
    // requests, accepts, K → refusal chance
    [0, 0, 2, 0],
    [10, 10, 2, 0],
    [10, 5, 2, 0], // half failing: still at K·accepts
    [10, 4, 2, 2 / 11],
    [100, 0, 2, 100 / 101],
    [1000, 0, 2, 1000 / 1001],
    [100, 50, 1, 50 / 101],
  ])("%i requests, %i accepts, K=%i → %f", (requests, accepts, ratio, chance) => {
    expect(refusalChance({ requests, accepts }, ratio)).toBeCloseTo(chance, 12);
  });

  it.each([
    [undefined, "accepted"],
    [Object.assign(new Error("x"), { code: "42601" }), "accepted"], // the database answered
    [new LeaseError("DATABASE_ERROR", "x", { executed: "no" }), "accepted"],
    [Object.assign(new Error("x"), { code: "53300" }), "failed"],
    [new LeaseError("DATABASE_UNAVAILABLE", "x", { executed: "maybe", cause: { code: "57P01" } }), "failed"],
    [new LeaseError("ACQUIRE_TIMEOUT", "x", { executed: "no" }), "neutral"],
    [new LeaseError("QUEUE_FULL", "x"), "neutral"],
    [new LeaseError("DEADLINE_EXCEEDED", "x", { executed: "maybe" }), "neutral"],
    [new LeaseError("DATABASE_UNAVAILABLE", "open", { cause: { circuit: "open" } }), "neutral"],
  ] as const)("classifies %s as %s", (error, outcome) => {
    expect(outcomeOf(error)).toBe(outcome);
  });

  it("refuses with the formula's chance once the window holds enough attempts, and counts each refusal", () => {
    rt.now = 1_000_000;
    const budget = new RetryBudget("t", DEFAULT_RETRY_BUDGET, clock);
    const failure = Object.assign(new Error("refused"), { code: "ECONNREFUSED" });
    // Below minRequests nothing is refused, whatever the draw.
    rt.random = 0;
    for (let i = 0; i < 9; i++) budget.record(failure);
    expect(budget.mayRetry()).toBe(true);
    budget.record(failure); // 10 requests, 0 accepts: chance 10/11
    rt.random = 10 / 11 - 1e-9;
    expect(budget.mayRetry()).toBe(false);
    expect(budget.counts()).toEqual({ requests: 11, accepts: 0 }); // the refusal counts as asked
    rt.random = 11 / 12; // chance now 11/12: a draw at it is allowed
    expect(budget.mayRetry()).toBe(true);
    expect(budget.refused).toBe(1);
    expect(budget.toJSON()).toMatchObject({ name: "t", requests: 11, accepts: 0, refused: 1 });
  });

  it("allows every retry while failures stay under half the attempts (K = 2)", () => {
    rt.now = 2_000_000;
    const budget = new RetryBudget("t", DEFAULT_RETRY_BUDGET, clock);
    rt.random = 0;
    for (let i = 0; i < 500; i++) budget.record(i % 3 === 0 ? new LeaseError("DATABASE_UNAVAILABLE", "x") : undefined);
    expect(refusalChance(budget.counts(), 2)).toBe(0);
    expect(budget.mayRetry()).toBe(true);
  });

  it("forgets attempts older than its window, a bucket at a time", () => {
    rt.now = 3_000_000;
    const budget = new RetryBudget("t", { ...DEFAULT_RETRY_BUDGET, windowMs: 10_000, bucketMs: 1000 }, clock);
    const failure = new LeaseError("DATABASE_UNAVAILABLE", "x", { executed: "no" });
    for (let i = 0; i < 50; i++) budget.record(failure);
    rt.now += 5000;
    for (let i = 0; i < 30; i++) budget.record(undefined);
    expect(budget.counts()).toEqual({ requests: 80, accepts: 30 });
    rt.now += 5000; // the failures' bucket has just left the window
    expect(budget.counts()).toEqual({ requests: 30, accepts: 30 });
    rt.random = 0;
    expect(budget.mayRetry()).toBe(true);
    rt.now += 60_000; // a slot reused long after: nothing stale is counted
    budget.record(failure);
    expect(budget.counts()).toEqual({ requests: 1, accepts: 0 });
  });
});

describe("DB_RETRY_BUDGET", () => {
  it("is on by default, `off` turns it off, anything else is INVALID_CONFIG", () => {
    const base = { DATABASE_URL: TEST_URL };
    expect(databaseConfig(base).retryBudget).toEqual(DEFAULT_RETRY_BUDGET);
    expect(databaseConfig({ ...base, DB_RETRY_BUDGET: " on " }).retryBudget).toEqual(DEFAULT_RETRY_BUDGET);
    expect(databaseConfig({ ...base, DB_RETRY_BUDGET: "off" }).retryBudget).toBeNull();
    for (const bad of ["yes", "1", "OFF"])
      expect(() => databaseConfig({ ...base, DB_RETRY_BUDGET: bad })).toThrow(
        expect.objectContaining({ code: "INVALID_CONFIG", message: expect.stringContaining("DB_RETRY_BUDGET") }),
      );
  });
});

describe("one budget per pool per isolate", () => {
  it("workerPool hands every request of the isolate the same budget for a pool, another to another pool", () => {
    // COORDINATOR=off: no Durable Object is needed to build the pool (workerd runs the full path).
    const env = { DATABASE_URL: TEST_URL, COORDINATOR: "off" } as Parameters<typeof workerPool>[0];
    const ctx = { waitUntil() {} };
    const first = workerPool(env, ctx, { driver: postgresDriver, pool: `${dbName}-a` });
    const second = workerPool(env, ctx, { driver: postgresDriver, pool: `${dbName}-a` });
    const other = workerPool(env, ctx, { driver: postgresDriver, pool: `${dbName}-b` });
    expect(first.db.retryBudget).toBeInstanceOf(RetryBudget);
    expect(second.db.retryBudget).toBe(first.db.retryBudget);
    expect(other.db.retryBudget).not.toBe(first.db.retryBudget);
  });
});

describe("what is retried", () => {
  it("never a failure whose statement may have run, except a serialization failure or deadlock", () => {
    const lost = (executed: "no" | "maybe" | "yes") =>
      new LeaseError("DATABASE_UNAVAILABLE", "x", {
        executed,
        cause: Object.assign(new Error("y"), { code: "57P01" }),
      });
    expect(isRetryable(lost("no"))).toBe(true);
    expect(isRetryable(lost("maybe"))).toBe(false);
    expect(isRetryable(lost("yes"))).toBe(false);
    // Work the caller says is safe to run twice (`idempotent`) is retried all the same.
    expect(isRetryable(lost("maybe"), true)).toBe(true);
    for (const code of ["40001", "40P01"]) {
      const rolledBack = new LeaseError("DATABASE_ERROR", "x", {
        executed: "maybe",
        cause: Object.assign(new Error("y"), { code }),
      });
      expect(isRetryable(rolledBack)).toBe(true);
    }
  });
});

/** A driver that counts the connections asked of it: one per database attempt. */
function counted(driver: Driver): Driver & { connects: number } {
  const self = {
    name: driver.name,
    connects: 0,
    connect: (limits?: Parameters<Driver["connect"]>[0]) => {
      self.connects++;
      return driver.connect(limits);
    },
  };
  return self;
}

function configFor(url: string, env: Record<string, string> = {}) {
  return {
    ...databaseConfig({ DATABASE_URL: url, DB_CONNECT_TIMEOUT_MS: "2000", APPLICATION_NAME: `${dbName}-b`, ...env }),
    // Out of reach, so the figure measures the retry budget alone, not the breaker's fast fails.
    breaker: { failureThreshold: 1_000_000, openMs: 5000 },
  };
}

// `waves` rounds of `concurrency` calls at once against a database that refuses every connect.
async function storm(budget: "on" | "off", waves: number, concurrency: number) {
  const config = configFor(refusedUrl, { DB_RETRY_BUDGET: budget });
  const driver = counted(openDriver(config));
  const log = captureLog();
  const database = new Database({ name: `storm-${budget}`, driver, leases: undefined, config, log: log.write });
  const codes = new Set<string>();
  for (let w = 0; w < waves; w++) {
    const results = await Promise.allSettled(Array.from({ length: concurrency }, () => database.query("SELECT 1")));
    for (const r of results) {
      expect(r.status).toBe("rejected");
      if (r.status === "rejected") codes.add(`${(r.reason as LeaseError).code}/${(r.reason as LeaseError).executed}`);
    }
  }
  return { perCall: driver.connects / (waves * concurrency), codes, status: database.status(), log };
}

describe("retry budget against a real Postgres", () => {
  it("refuses retries under a failure storm: ≤ 1.1 database attempts per call (3 without it)", async () => {
    const on = await storm("on", 25, 20);
    const off = await storm("off", 25, 20);
    console.info(`database attempts per call: budget on ${on.perCall.toFixed(3)}, off ${off.perCall.toFixed(3)}`);
    // A refused retry ends the call with the last attempt's error, its code unchanged.
    expect([...on.codes]).toEqual(["DATABASE_UNAVAILABLE/no"]);
    expect(on.perCall).toBeLessThanOrEqual(1.1);
    expect(off.perCall).toBeGreaterThanOrEqual(2.9);
    expect(on.status.retryBudget?.refused).toBeGreaterThan(400);
    expect(off.status.retryBudget).toBeNull();
    expect(on.log.lines.filter((l) => l.event === "database_error" && l.retryBudget === "refused").length).toBe(
      on.status.retryBudget?.refused,
    );
  }, 60_000);

  it("allows retries when failures are rare: every failed first attempt is retried and succeeds", async () => {
    const config = configFor(TEST_URL);
    const good = openDriver(config);
    const refused = openDriver(configFor(refusedUrl));
    let n = 0;
    // One connect in ten reaches the refusing role: a real failure, 10 % of first attempts.
    const driver = counted({ name: good.name, connect: (l) => (++n % 10 === 0 ? refused : good).connect(l) });
    const database = new Database({ name: "rare", driver, leases: undefined, config, log: () => {} });
    for (let w = 0; w < 20; w++) {
      const rows = await Promise.all(Array.from({ length: 10 }, () => database.query<{ n: number }>("SELECT 1 AS n")));
      expect(rows.every((r) => r[0]?.n === 1)).toBe(true);
    }
    expect(database.status().retryBudget).toMatchObject({ refused: 0 });
    expect(driver.connects).toBeGreaterThanOrEqual(220); // 200 first attempts, and a retry of every tenth connect
  }, 60_000);

  it("never retries a statement cut off mid-run (executed: maybe): it runs once", async () => {
    const app = `${dbName}-maybe`;
    const config = configFor(TEST_URL, { APPLICATION_NAME: app });
    const driver = counted(openDriver(config));
    const database = new Database({ name: "maybe", driver, leases: undefined, config, log: () => {} });
    const call = database.query("SELECT pg_sleep(2)");
    call.catch(() => {}); // asserted below; it may reject before the terminate call answers
    // Terminate the backend while its statement runs: the connection is lost mid-statement.
    let terminated = 0;
    for (let i = 0; i < 100 && terminated === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const rows = await admin`
        SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
        WHERE application_name = ${app} AND state = 'active' AND query LIKE '%pg_sleep%'`;
      terminated = rows.length;
    }
    expect(terminated).toBe(1);
    await expect(call).rejects.toMatchObject({ code: "DATABASE_UNAVAILABLE", executed: "maybe" });
    expect(driver.connects).toBe(1);
  }, 20_000);

  it("retries it when the caller says the statement is idempotent: a fresh backend answers", async () => {
    const app = `${dbName}-idempotent`;
    const config = configFor(TEST_URL, { APPLICATION_NAME: app });
    const driver = counted(openDriver(config));
    const database = new Database({ name: "idempotent", driver, leases: undefined, config, log: () => {} });
    const call = database.query<{ backend: number }>("SELECT pg_backend_pid() AS backend FROM pg_sleep(1)", [], {
      idempotent: true,
    });
    let victim: number | undefined;
    for (let i = 0; i < 100 && victim === undefined; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const rows = await admin<{ pid: number }[]>`
        SELECT pid FROM pg_stat_activity WHERE application_name = ${app} AND state = 'active' AND query LIKE '%pg_sleep%'`;
      victim = rows[0]?.pid;
    }
    expect(victim).toBeDefined();
    await admin`SELECT pg_terminate_backend(${victim!})`;
    const [row] = await call;
    expect(row!.backend).not.toBe(victim);
    expect(driver.connects).toBe(2);
  }, 20_000);
});

describe("an exhausted pool is not a database that is down", () => {
  it("acquire timeouts, full queues and an unreachable coordinator never open the breaker", async () => {
    const config = { ...configFor(TEST_URL), breaker: { failureThreshold: 2, openMs: 60_000 } };
    const coordinator = memoryCoordinator({ limit: 1, maxQueue: 1, waitMs: 2000, leaseTtlMs: 30_000 });
    const database = new Database({
      name: "exhausted",
      driver: openDriver(config),
      leases: new Leases(coordinator),
      config,
      log: () => {},
    });
    // Hold the one slot until the end.
    let free!: () => void;
    const held = database.run(() => new Promise<void>((resolve) => (free = resolve)));
    await new Promise((r) => setTimeout(r, 50));
    const codes: string[] = [];
    const attempt = async (p: Promise<unknown>) => {
      const error = await p.then(
        () => undefined,
        (e: LeaseError) => e,
      );
      codes.push(error?.code ?? "ok");
    };
    // One waits its deadline out (ACQUIRE_TIMEOUT) while the others find the queue full.
    await Promise.all([
      attempt(database.query("SELECT 1", [], { deadlineMs: 300 })),
      ...Array.from({ length: 4 }, () => attempt(database.query("SELECT 1", [], { deadlineMs: 300 }))),
    ]);
    for (let i = 0; i < 4; i++) await attempt(database.query("SELECT 1", [], { waitMs: 30, deadlineMs: 300 }));
    // Nor do overload answers spend the retry budget: the database never saw them.
    expect(database.status().retryBudget).toMatchObject({ requests: 0, accepts: 0 });
    coordinator.down = true;
    for (let i = 0; i < 4; i++) await attempt(database.query("SELECT 1", [], { deadlineMs: 500 }));
    coordinator.down = false;
    expect(new Set(codes)).toEqual(new Set(["ACQUIRE_TIMEOUT", "QUEUE_FULL", "COORDINATOR_UNAVAILABLE"]));
    expect(database.status().breaker).toMatchObject({ state: "closed", failures: 0 });
    free();
    await held;
    // The database answers once a slot is free again.
    await expect(database.query<{ n: number }>("SELECT 1 AS n")).resolves.toEqual([{ n: 1 }]);
  }, 20_000);
});
