/**
 * `npm run bench:retries`: sustained overload, 5× what the database can serve, from clients that
 * retry as docs/errors.md tells them (a 503 is retried after its Retry-After, in whole seconds, at
 * most twice; nothing else is retried by the client), with and without the database layer's retry
 * budget (`DB_RETRY_BUDGET`). Counts every database attempt (each opens a connection) per user
 * request, and goodput against the capacity measured first.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:retries
 *
 * The database: a role with `CONNECTION LIMIT ${ROLE_LIMIT}` (10), each request one statement of
 * `pg_sleep(${WORK_MS} ms)` (100) on a connection of its own. Two pools in front of it:
 *   right   — `LEASE_LIMIT` = the role's limit: the pool never lets the database refuse anyone;
 *   4× high — `LEASE_LIMIT` = 4 × the role's limit (a limit set too high): three attempts in four
 *             are refused by the database (`53300`, retryable), and the layer's retries multiply them.
 * Each with `DB_RETRY_BUDGET=on` (the default) and `off`, in alternating order per round.
 *
 * The coordinator is the tests' in-process one (test/db/helpers.ts: the same core as both backends),
 * so the coordinator adds no load to the database whose attempts are counted. Open-loop arrivals
 * (a new user request every 1/(5 × capacity) s whatever the answers), so overload stays overload.
 *
 * Env: BENCH_SECONDS (20 per run), BENCH_ROUNDS (1), ROLE_LIMIT (10), WORK_MS (100), OVERLOAD (5),
 * SETUPS (`right,high`), CLAIM_MS (the clients' claim window; default measured).
 */
import postgres from "postgres";
import { Leases } from "../src/client/leases.ts";
import { isLeaseError } from "../src/core/index.ts";
import { databaseConfig } from "../src/db/config.ts";
import { openDriver } from "../src/db/connect.ts";
import { Database } from "../src/db/database.ts";
import type { Driver } from "../src/db/driver.ts";
import { memoryCoordinator } from "../test/db/helpers.ts";

const admin = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const seconds = Number(process.env.BENCH_SECONDS ?? "20");
const rounds = Number(process.env.BENCH_ROUNDS ?? "1");
const roleLimit = Number(process.env.ROLE_LIMIT ?? "10");
const workMs = Number(process.env.WORK_MS ?? "100");
const overload = Number(process.env.OVERLOAD ?? "5");
const ROLE = "leasegate_retry_bench";
/** `CLAIM_MS`: a fixed claim window for the clients (default: measured from the round trips). */
const claimMs = process.env.CLAIM_MS;
/** `SETUPS`: the pools to run, by name (`right`, `high`); default both. */
const only = process.env.SETUPS?.split(",").map((s) => s.trim());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const sql = postgres(admin, { max: 1, onnotice: () => {} });
await sql.unsafe(`DO $$BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}') THEN CREATE ROLE ${ROLE} LOGIN; END IF;
END$$; ALTER ROLE ${ROLE} CONNECTION LIMIT ${roleLimit};`);
const url = new URL(admin);
url.username = ROLE;
url.password = "";

interface Setup {
  name: string;
  leaseLimit: number;
  budget: "on" | "off";
}

interface Outcome {
  setup: Setup;
  users: number;
  /** Successes within the run's time (goodput). */
  ok: number;
  /** Successes in all, the requests still retrying at the end included. */
  okTotal: number;
  attempts: number;
  failed: Record<string, number>;
  clientRetries: number;
  /** Acquires the coordinator answered at once, their predicted wait hopeless. */
  toldAtOnce: number;
}

let seq = 0;

/** One database layer over a fresh in-process pool; every attempt's connect is counted. */
function database(setup: Setup) {
  const config = databaseConfig({
    DATABASE_URL: url.toString(),
    DB_RETRY_BUDGET: setup.budget,
    DB_DEADLINE_MS: "5000",
    DB_STATEMENT_TIMEOUT: "off",
  });
  const inner = openDriver(config);
  const counted = { attempts: 0 };
  const driver: Driver = {
    name: inner.name,
    connect: (limits) => {
      counted.attempts++;
      return inner.connect(limits);
    },
  };
  const coordinator = memoryCoordinator({
    limit: setup.leaseLimit,
    maxQueue: 1000,
    waitMs: 5000,
    leaseTtlMs: 1500,
  });
  const pool = `retries-${process.pid}-${++seq}`;
  const leases = new Leases(coordinator, { pool, claimMs: claimMs === undefined ? undefined : Number(claimMs) });
  const db = new Database({ name: pool, driver, leases, config, log: () => {} });
  return { db, counted, coordinator };
}

/** One user request as the docs tell a client: a 503 is retried after Retry-After (whole seconds), at most twice. */
async function user(db: Database, out: Outcome, until: number): Promise<void> {
  for (let tries = 0; ; tries++) {
    try {
      await db.query(`SELECT pg_sleep(${workMs / 1000})`);
      out.ok++;
      return;
    } catch (error) {
      const code = isLeaseError(error) ? error.code : "OTHER";
      const retryAfterMs = isLeaseError(error) ? error.retryAfterMs : undefined;
      const status503 = retryAfterMs !== undefined && code !== "DATABASE_ERROR";
      if (!status503 || tries >= 2 || Date.now() > until) {
        out.failed[code] = (out.failed[code] ?? 0) + 1;
        return;
      }
      out.clientRetries++;
      await sleep(Math.max(1, Math.ceil(retryAfterMs / 1000)) * 1000);
    }
  }
}

/** Closed loop of exactly the role's limit of callers, no overload: what the database serves. */
async function capacity(): Promise<number> {
  const { db } = database({ name: "capacity", leaseLimit: roleLimit, budget: "on" });
  const until = Date.now() + 5000;
  let ok = 0;
  await Promise.all(
    Array.from({ length: roleLimit }, async () => {
      while (Date.now() < until) {
        // The server is shared: a refusal (its own max_connections) is not the role's capacity.
        await db.query(`SELECT pg_sleep(${workMs / 1000})`).then(
          () => ok++,
          () => sleep(100),
        );
      }
    }),
  );
  return ok / 5;
}

async function run(setup: Setup, rate: number): Promise<Outcome> {
  const { db, counted, coordinator } = database(setup);
  const out: Outcome = {
    setup,
    users: 0,
    ok: 0,
    okTotal: 0,
    attempts: 0,
    failed: {},
    clientRetries: 0,
    toldAtOnce: 0,
  };
  const started = Date.now();
  const endAt = started + seconds * 1000;
  const running: Array<Promise<void>> = [];
  // Open loop: arrivals on the clock, whatever the answers. Requests still retrying at the end
  // finish (their attempts count), but only within the run's time are they goodput.
  for (let i = 0; Date.now() < endAt; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    out.users++;
    running.push(user(db, out, endAt));
  }
  const okInTime = out.ok;
  await Promise.all(running);
  out.attempts = counted.attempts;
  out.toldAtOnce = (await coordinator.stats()).prediction?.shed ?? 0;
  return { ...out, ok: okInTime, okTotal: out.ok };
}

const cap = await capacity();
const rate = overload * cap;
console.log(
  `retries: role CONNECTION LIMIT ${roleLimit}, ${workMs} ms statements; capacity ${cap.toFixed(1)} req/s (closed loop of ${roleLimit}); ` +
    `${overload}× = ${rate.toFixed(0)} user requests/s for ${seconds} s per run, ${rounds} round(s)`,
);
const setups: Setup[] = [
  { name: "right", leaseLimit: roleLimit, budget: "on" },
  { name: "right", leaseLimit: roleLimit, budget: "off" },
  { name: "4× high", leaseLimit: 4 * roleLimit, budget: "on" },
  { name: "4× high", leaseLimit: 4 * roleLimit, budget: "off" },
];
const chosen = setups.filter((s) => !only || only.includes(s.name === "right" ? "right" : "high"));
const results: Outcome[] = [];
for (let r = 0; r < rounds; r++) {
  // Every other round in reverse order: the machine's drift falls on both sides.
  for (const setup of r % 2 === 0 ? chosen : [...chosen].reverse()) {
    results.push(await run(setup, rate));
    await sleep(1000);
  }
}
const row = (cells: Array<string | number>) => `| ${cells.join(" | ")} |`;
console.log(
  row([
    "pool",
    "retry budget",
    "user requests",
    "goodput req/s",
    "goodput / capacity",
    "database attempts",
    "attempts per user request",
    "attempts per success",
    "client retries (after Retry-After)",
    "acquires told at once (hopeless)",
    "failed",
  ]),
);
console.log(row(["---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---"]));
for (const o of results) {
  const failed =
    Object.entries(o.failed)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ") || "0";
  const goodput = o.ok / seconds;
  console.log(
    row([
      `${o.setup.name} (LEASE_LIMIT ${o.setup.leaseLimit})`,
      o.setup.budget,
      o.users,
      goodput.toFixed(1),
      `${((100 * goodput) / cap).toFixed(0)} %`,
      o.attempts,
      (o.attempts / o.users).toFixed(2),
      (o.attempts / Math.max(1, o.okTotal)).toFixed(2),
      o.clientRetries,
      o.toldAtOnce,
      failed,
    ]),
  );
}
await sql.end();
process.exit(0);
