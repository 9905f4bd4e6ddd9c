/**
 * `npm run bench:pooler`: leasegate in front of a transaction-mode pooler. PgBouncer
 * (`pool_mode = transaction`, `default_pool_size` POOL_SIZE) reaches one Postgres role whose
 * `CONNECTION LIMIT` is LEASE_LIMIT: the pooler alone may open more than the role allows. Many
 * callers run short statements through it with `localPool` (`DB_POOLER=transaction`, the
 * coordinator on `DATABASE_DIRECT_URL`), in rounds that alternate with `COORDINATOR=off`. With
 * BENCH_POOLERS > 1, that many PgBouncers (Hyperdrive's regions, Supavisor's nodes) share the
 * role, callers split between them, one limit across them. Counted: callers' errors by code,
 * "too many connections" anywhere (`53300` at a caller, or the poolers' own server logins refused,
 * from their logs), and the role's server connections in `pg_stat_activity`, sampled every 10 ms.
 * Exits 1 when a leasegate round saw one `53300` or more server connections than the limit.
 *
 *   npm run bench:pooler
 *
 * Env: DATABASE_URL (a superuser on Postgres itself; default the local cluster), POOLER_PORT
 * (18700; further poolers on the next ports), BENCH_POOLERS (1), POOL_SIZE (20), BENCH_CALLERS
 * (60), BENCH_SECONDS (4), BENCH_ROUNDS (2), LEASE_LIMIT (8), LEASE_QUEUE, BENCH_DRIVER
 * (`postgres`, `pg`, `postgres-prepared`). Needs the `pgbouncer` binary: installed with apt-get
 * when missing and the process may (root). BENCH_LOGS: a folder to keep the poolers' logs in.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { type LocalPool, localPool } from "../local/pool.ts";
import type { DriverModule } from "../src/db/driver.ts";
import { pgDriver } from "../src/db/drivers/node-postgres.ts";
import { postgresJsDriver } from "../src/db/drivers/postgres-js.ts";
import { countConnections } from "../src/db/reconcile.ts";
import { startSampler } from "../test/limit/sampler.ts";

const admin_url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const port = Number(process.env.POOLER_PORT ?? "18700");
const callers = Number(process.env.BENCH_CALLERS ?? "60");
const seconds = Number(process.env.BENCH_SECONDS ?? "4");
const rounds = Number(process.env.BENCH_ROUNDS ?? "2");
const limit = Number(process.env.LEASE_LIMIT ?? "8");
const poolSize = Number(process.env.POOL_SIZE ?? "20");
const poolerCount = Number(process.env.BENCH_POOLERS ?? "1");
const DB = "leasegate_bench_pooler";
const ROLE = "leasegate_pooler_app";
const APP = "bench-pooler";

/** The PgBouncer binary, installed from Debian's package when missing and apt-get may run. */
function pgbouncerBinary(): string {
  const find = () => {
    try {
      return execFileSync("sh", ["-c", "command -v pgbouncer || ls /usr/sbin/pgbouncer"], { encoding: "utf8" }).trim();
    } catch {
      return "";
    }
  };
  let path = find();
  if (!path && process.getuid?.() === 0) {
    print("installing pgbouncer (apt-get)…");
    execFileSync("sh", ["-c", "apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null"], {
      stdio: "inherit",
    });
    path = find();
  }
  if (!path) throw new Error("pgbouncer is not installed: apt-get install -y pgbouncer");
  return path;
}

/** One PgBouncer in transaction mode on `listenPort`; its log is its stderr, kept in memory. */
interface Pooler {
  readonly port: number;
  log(): string;
  stop(): Promise<void>;
}

async function startPooler(binary: string, dir: string, listenPort: number): Promise<Pooler> {
  const ini = join(dir, `pgbouncer-${listenPort}.ini`);
  writeFileSync(
    ini,
    `[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${listenPort}
unix_socket_dir =
auth_type = trust
auth_file = ${join(dir, "users.txt")}
pool_mode = transaction
default_pool_size = ${poolSize}
max_client_conn = 2000
; leasegate's deadline travels as startup parameters, which PgBouncer refuses unless told to
; ignore them; a transaction carries it again as SET LOCAL (docs/poolers.md).
ignore_startup_parameters = statement_timeout,idle_in_transaction_session_timeout,client_connection_check_interval,options
`,
  );
  // PgBouncer refuses to run as root.
  const args = process.getuid?.() === 0 ? ["-u", "nobody", ini] : [ini];
  const child: ChildProcess = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stdout!.on("data", (d) => (log += d));
  child.stderr!.on("data", (d) => (log += d));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(listenPort, "127.0.0.1", () => resolve(s.end() && true)).on("error", () => resolve(false));
    });
    if (up) break;
    if (i > 100 || child.exitCode !== null) throw new Error(`pgbouncer did not start on ${listenPort}:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port: listenPort,
    log: () => log,
    stop: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** postgres.js with `prepare: false`: PgBouncer before 1.21 keeps no prepared statement across transactions. */
const unprepared = ((url: string, options: Record<string, unknown>) =>
  postgres(url, { ...options, prepare: false })) as unknown as typeof postgres;
/**
 * BENCH_DRIVER: `postgres` (postgres.js, `prepare: false`), `pg` (node-postgres: unnamed
 * statements, as it is) or `postgres-prepared` (postgres.js as leasegate's driver sets it up).
 */
const driverName = process.env.BENCH_DRIVER ?? "postgres";
const drivers: Record<string, () => DriverModule<unknown>> = {
  postgres: () => postgresJsDriver(unprepared) as DriverModule<unknown>,
  pg: () => pgDriver(pg) as DriverModule<unknown>,
  "postgres-prepared": () => postgresJsDriver(postgres) as DriverModule<unknown>,
};
const driver = (drivers[driverName] ?? drivers.postgres!)();

/** "53300" when the failure is the database refusing a connection, else its code. */
function kind(error: unknown): string {
  for (let e = error as { code?: unknown; message?: unknown; cause?: unknown } | undefined; e; e = e.cause as never) {
    if (e.code === "53300" || /too many connections/i.test(String(e.message))) return "53300";
  }
  return String((error as { code?: unknown }).code ?? "other");
}

function pct(sorted: number[], q: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

interface Round {
  mode: "leasegate" | "off";
  ok: number;
  errors: Record<string, number>;
  callerTooMany: number;
  loginsRefused: number;
  peak: number;
  p50: number;
  p99: number;
  reconcile?: string;
}

async function round(binary: string, dir: string, mode: Round["mode"], n: number): Promise<Round> {
  // Fresh poolers each round: no server connection left from the round before.
  const poolers: Pooler[] = [];
  for (let i = 0; i < poolerCount; i++) poolers.push(await startPooler(binary, dir, port + i));
  const direct = new URL(admin_url);
  direct.pathname = `/${DB}`;
  const admin = postgres(direct.href, { max: 2, onnotice: () => {} });
  const pools: LocalPool[] = [];
  for (const p of poolers) {
    pools.push(
      await localPool(
        {
          DATABASE_URL: `postgres://${ROLE}@127.0.0.1:${p.port}/${DB}`,
          DATABASE_DIRECT_URL: direct.href,
          DB_POOLER: "transaction",
          COORDINATOR: mode === "leasegate" ? "on" : "off",
          LEASE_POOL: `bench-pooler-${process.pid}-${n}`,
          LEASE_LIMIT: String(limit),
          LEASE_WAIT_MS: "10000",
          LEASE_MAX_QUEUE: String(callers * 2),
          APPLICATION_NAME: APP,
          ...(process.env.LEASE_QUEUE ? { LEASE_QUEUE: process.env.LEASE_QUEUE } : {}),
        },
        { driver },
      ),
    );
  }
  const sampler = await startSampler((t, p) => admin.unsafe(t, p as never[]), ROLE, 10);
  const errors: Record<string, number> = {};
  const latencies: number[] = [];
  let ok = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: callers }, async (_, i) => {
      const pool = pools[i % pools.length]!;
      while (Date.now() < end) {
        const t0 = performance.now();
        try {
          await pool.db.query("SELECT pg_sleep(0.01)");
          latencies.push(performance.now() - t0);
          ok++;
        } catch (error) {
          const k = kind(error);
          errors[k] = (errors[k] ?? 0) + 1;
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    }),
  );
  const seen = await sampler.stop();
  let reconcile: string | undefined;
  if (mode === "leasegate") {
    // The poolers keep their server connections, idle and named by the application: what a
    // reconciliation without DB_POOLER would count as the application's.
    // Counted as the application's role (reconciliation counts the role it logs in as).
    const [plain, pooled] = await admin.begin(async (tx) => {
      await tx.unsafe(`SET LOCAL ROLE ${ROLE}`);
      const db = tx as unknown as postgres.Sql;
      return [await countConnections(db, APP), await countConnections(db, APP, "transaction")];
    });
    reconcile = `${plain!.appConnections} connections named ${APP} (the poolers' idle ones) without DB_POOLER, ${pooled!.appConnections} in a transaction with it; leases held ${(await pools[0]!.leases!.stats()).held}`;
  }
  for (const pool of pools) await pool.close();
  for (const p of poolers) await p.stop();
  if (process.env.BENCH_LOGS)
    for (const p of poolers) writeFileSync(join(process.env.BENCH_LOGS, `pgbouncer-${n}-${p.port}.log`), p.log());
  await admin.unsafe("DELETE FROM leasegate_leases WHERE pool LIKE 'bench-pooler-%'").catch(() => {});
  await admin.unsafe("DELETE FROM leasegate_waiters WHERE pool LIKE 'bench-pooler-%'").catch(() => {});
  await admin.unsafe("DELETE FROM leasegate_pools WHERE pool LIKE 'bench-pooler-%'").catch(() => {});
  await admin.end();
  latencies.sort((a, b) => a - b);
  const loginsRefused = poolers.reduce(
    (s, p) => s + (p.log().match(/login failed: FATAL:? too many connections/g) ?? []).length,
    0,
  );
  return {
    mode,
    ok,
    errors,
    callerTooMany: errors["53300"] ?? 0,
    loginsRefused,
    peak: seen.peak(),
    p50: pct(latencies, 0.5),
    p99: pct(latencies, 0.99),
    reconcile,
  };
}

/** The database layer's log lines (slow queries, failures), kept apart from the table: the first of each code is shown. */
const logged = new Map<string, string>();
const print = console.log.bind(console);
console.log = (line: unknown) => {
  const code = /"code":"([A-Z_0-9]+)"/.exec(String(line))?.[1] ?? "log";
  if (!logged.has(code)) logged.set(code, String(line).slice(0, 600));
};

async function main(): Promise<void> {
  const binary = pgbouncerBinary();
  const version = execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0];
  const admin = postgres(admin_url, { max: 1, onnotice: () => {} });
  const [db] = await admin`SELECT 1 FROM pg_database WHERE datname = ${DB}`;
  if (!db) await admin.unsafe(`CREATE DATABASE ${DB}`);
  const [role] = await admin`SELECT 1 FROM pg_roles WHERE rolname = ${ROLE}`;
  await admin.unsafe(`${role ? "ALTER" : "CREATE"} ROLE ${ROLE} LOGIN CONNECTION LIMIT ${limit}`);
  await admin.end();
  const dir = mkdtempSync(join(tmpdir(), "leasegate-pooler-"));
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, "users.txt"), `"${ROLE}" ""\n`);
  chmodSync(join(dir, "users.txt"), 0o644);
  print(
    `${version}; ${poolerCount} pooler(s) × default_pool_size ${poolSize}, role CONNECTION LIMIT ${limit}, LEASE_LIMIT ${limit}, ` +
      `${callers} callers, ${seconds} s per round, SELECT pg_sleep(0.01) per request, driver ${driverName}, LEASE_QUEUE ${process.env.LEASE_QUEUE ?? "default"}\n`,
  );
  print(
    "| round | mode | ok | req/s | p50 ms | p99 ms | errors | 53300 at callers | logins refused (poolers) | peak server conns |",
  );
  print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|");
  const results: Round[] = [];
  let n = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      for (const mode of ["leasegate", "off"] as const) {
        const x = await round(binary, dir, mode, ++n);
        results.push(x);
        const errors =
          Object.entries(x.errors)
            .map(([k, v]) => `${k}×${v}`)
            .join(" ") || "0";
        print(
          `| ${r + 1} | ${mode} | ${x.ok} | ${Math.round(x.ok / seconds)} | ${x.p50.toFixed(1)} | ${x.p99.toFixed(1)} | ${errors} | ${x.callerTooMany} | ${x.loginsRefused} | ${x.peak} |`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  for (const x of results) if (x.reconcile) print(`reconciliation after a leasegate round: ${x.reconcile}`);
  for (const [code, line] of logged) print(`first ${code} logged: ${line}`);
  const broken = results.filter(
    (x) => x.mode === "leasegate" && (x.callerTooMany > 0 || x.loginsRefused > 0 || x.peak > limit),
  );
  if (broken.length > 0) {
    console.error(`FAILED: a leasegate round saw 53300 or more than ${limit} server connections`);
    process.exitCode = 1;
  }
}

await main();
