/**
 * `npm run bench:local`: grants/s and acquire latency of the PostgresCoordinator with 1, 2 and 4 OS
 * processes sharing one pool. Each process runs `BENCH_CONCURRENCY` loops of acquire → release
 * (no work under the lease: this measures the coordinator, not a query).
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:local
 *
 * Env: BENCH_PROCESSES (default "1,2,4"), BENCH_SECONDS (3), BENCH_CONCURRENCY (16),
 * LEASE_LIMIT (10).
 */
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { PostgresCoordinator } from "../local/postgres-coordinator.ts";
import { configFromEnv } from "../src/core/index.ts";

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const seconds = Number(process.env.BENCH_SECONDS ?? "3");
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? "16");

interface Result {
  grants: number;
  errors: number;
  latenciesMs: number[];
}

async function worker(pool: string): Promise<void> {
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const coordinator = new PostgresCoordinator({ sql, pool, config: configFromEnv(process.env) });
  await coordinator.ready();
  process.send!({ ready: true });
  const { startAt, endAt } = await new Promise<{ startAt: number; endAt: number }>((resolve) =>
    process.once("message", resolve),
  );
  await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
  const result: Result = { grants: 0, errors: 0, latenciesMs: [] };
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < endAt) {
        const t0 = performance.now();
        const r = await coordinator.acquire({ holder: `bench ${process.pid}` });
        if (!r.ok) {
          result.errors++;
          continue;
        }
        result.latenciesMs.push(performance.now() - t0);
        result.grants++;
        await coordinator.release({ leaseId: r.lease.id, fence: r.lease.fence });
      }
    }),
  );
  process.send!(result);
  await coordinator.close();
  await sql.end();
}

function pct(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function run(processes: number): Promise<string> {
  const pool = `bench-${process.pid}-${processes}-${Date.now()}`;
  const self = fileURLToPath(import.meta.url);
  const children = Array.from({ length: processes }, () =>
    fork(self, ["worker", pool], { stdio: ["ignore", "inherit", "inherit", "ipc"] }),
  );
  await Promise.all(children.map((c) => new Promise((r) => c.once("message", r))));
  const startAt = Date.now() + 200;
  const endAt = startAt + seconds * 1000;
  const results = await Promise.all(
    children.map((c) => {
      const done = new Promise<Result>((r) => c.once("message", r));
      c.send({ startAt, endAt });
      return done;
    }),
  );
  const grants = results.reduce((s, r) => s + r.grants, 0);
  const errors = results.reduce((s, r) => s + r.errors, 0);
  const lat = results.flatMap((r) => r.latenciesMs).sort((a, b) => a - b);
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"])
    await sql`DELETE FROM ${sql(t)} WHERE pool = ${pool}`;
  await sql.end();
  const row = `| ${processes} | ${processes * concurrency} | ${Math.round(grants / seconds)} | ${pct(lat, 0.5).toFixed(1)} | ${pct(lat, 0.99).toFixed(1)} | ${errors} |`;
  console.log(row);
  return row;
}

if (process.argv[2] === "worker") {
  await worker(process.argv[3]!);
} else {
  const counts = (process.env.BENCH_PROCESSES ?? "1,2,4").split(",").map(Number);
  console.log(`limit ${configFromEnv(process.env).limit}, ${concurrency} callers per process, ${seconds} s per row\n`);
  console.log("| processes | callers | grants/s | acquire p50 ms | acquire p99 ms | errors |");
  console.log("|---:|---:|---:|---:|---:|---:|");
  for (const n of counts) await run(n);
}
