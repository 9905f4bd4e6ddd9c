/**
 * `npm run bench:run-on`: how long a statement's backend stays in `pg_stat_activity` after the
 * work should have stopped — after its caller's answer (a deadline passing mid-statement), after
 * its lease ended (an operator's revoke; the holder's coordinator cut off past the lease's expiry).
 * Each repetition runs a 4 s `pg_sleep` under one lease of a `localPool` (LEASE_LIMIT=1, TTL 900 ms)
 * whose leased connections log in as a role of their own, sampled every ~10 ms on a superuser
 * connection (the harness of `test/limit/`). Target: ≤ 100 ms. Every wait is bounded, so the old
 * behaviour (the statement runs to its end) measures too.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:run-on [-- --smoke]
 *
 * Env: BENCH_REPS (default 5; `--smoke`: 1).
 */
import type postgres from "postgres";
import type { LocalPool } from "../local/pool.ts";
import {
  ADMIN_URL,
  type Scene,
  cuttableProxy,
  holderApp,
  running,
  scene,
  sleep,
  untilGone,
  waitFor,
  watch,
} from "../test/limit/harness.ts";

const smoke = process.argv.includes("--smoke");
const reps = smoke ? 1 : Number(process.env.BENCH_REPS ?? "5");
const TTL_MS = 900;
const STATEMENT_S = 4;

interface Rep {
  /** Backend last seen after the reference moment, ms (0 when gone before it). */
  runOnMs: number;
  /** What the caller was told. */
  answer: string;
}

/** The holder's backend's last sighting after `from`, ms; the harness waited until it was gone. */
function runOn(s: Scene, marker: string, from: number): number {
  const app = holderApp(s.sampler, marker);
  const last = s.sampler.seen((b) => b.app === app)?.last ?? from;
  return Math.max(0, Math.round(last - from));
}

const told = (o: ReturnType<ReturnType<typeof watch>["outcome"]>) =>
  o.settled ? (o.ok ? "result" : o.code) : "no answer";

async function deadline(s: Scene, pool: LocalPool<postgres.Sql>, n: number): Promise<Rep> {
  const marker = `pg_sleep(${STATEMENT_S}) /* run-on deadline ${n} */`;
  const call = watch(pool.db.query(`SELECT ${marker}`, [], { holder: `deadline ${n}` }));
  const o = await call.within((STATEMENT_S + 2) * 1000);
  await untilGone(s.sampler, marker, (STATEMENT_S + 1) * 1000, 50);
  return { runOnMs: runOn(s, marker, o.at), answer: told(o) };
}

async function revoke(s: Scene, pool: LocalPool<postgres.Sql>, n: number): Promise<Rep> {
  const marker = `pg_sleep(${STATEMENT_S}) /* run-on revoke ${n} */`;
  const call = watch(pool.sql((sql) => sql.unsafe(`SELECT ${marker}`), { holder: `revoke ${n}` }));
  await waitFor(() => s.sampler.seen(running(marker)) !== null, 3000);
  const lease = (await pool.operator!.stats()).leases.find((l) => l.holder === `revoke ${n}`);
  if (!lease) throw new Error("the holder's lease is not held");
  const endedAt = Date.now();
  await pool.operator!.revoke(lease.idPrefix);
  const o = await call.within((STATEMENT_S + 2) * 1000);
  await untilGone(s.sampler, marker, (STATEMENT_S + 1) * 1000, 50);
  return { runOnMs: runOn(s, marker, endedAt), answer: told(o) };
}

async function unreachable(s: Scene, other: LocalPool<postgres.Sql>, n: number): Promise<Rep> {
  const proxy = await cuttableProxy(Number(new URL(ADMIN_URL).port || 5432));
  const pool = await s.open({ LEASE_TTL_MS: String(TTL_MS), DATABASE_URL: proxy.via(ADMIN_URL) });
  try {
    const marker = `pg_sleep(${STATEMENT_S}) /* run-on unreachable ${n} */`;
    const call = watch(pool.sql((sql) => sql.unsafe(`SELECT ${marker}`), { holder: `unreachable ${n}` }));
    await waitFor(() => s.sampler.seen(running(marker)) !== null, 3000);
    proxy.block();
    await sleep(50);
    const lease = (await other.operator!.stats()).leases.find((l) => l.holder === `unreachable ${n}`);
    if (!lease) throw new Error("the holder's lease is not held");
    const endedAt = Date.now() + lease.expiresInMs;
    // The old code hangs on the release it cannot send once the statement ends: bounded.
    const o = await call.within((STATEMENT_S + 1) * 1000);
    proxy.unblock();
    await untilGone(s.sampler, marker, (STATEMENT_S + 1) * 1000, 50);
    await call.within(3000);
    return { runOnMs: runOn(s, marker, endedAt), answer: told(o) };
  } finally {
    proxy.unblock();
    await pool.close().catch(() => {});
    await proxy.close();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const rows: Array<{ name: string; from: string; reps: Rep[] }> = [];
for (const [name, from, run] of [
  ["deadline (DB_DEADLINE_MS=1000)", "the caller's answer", deadline],
  ["revoke", "the revoke", revoke],
  ["coordinator unreachable", "the lease's expiry", unreachable],
] as const) {
  // Headroom in the role: this measures run-on, not refused logins (the tests assert those).
  const s = await scene(1, 4);
  try {
    const deadlineMs = run === deadline ? "1000" : "10000";
    const pool = await s.open({ LEASE_TTL_MS: String(TTL_MS), DB_DEADLINE_MS: deadlineMs });
    const done: Rep[] = [];
    for (let i = 1; i <= reps; i++) {
      done.push(await run(s, pool, i));
      process.stderr.write(`${name} #${i}: ${done.at(-1)!.runOnMs} ms (${done.at(-1)!.answer})\n`);
    }
    rows.push({ name, from, reps: done });
  } finally {
    await s.end();
  }
}

console.log(
  `\nRun-on after the work should have stopped (${reps} reps, a ${STATEMENT_S} s statement, target ≤ 100 ms)\n`,
);
console.log("| scenario | measured from | median ms | max ms | caller was told |");
console.log("|---|---|---:|---:|---|");
for (const r of rows) {
  const ms = r.reps.map((x) => x.runOnMs);
  const answers = [...new Set(r.reps.map((x) => x.answer))].join(", ");
  console.log(`| ${r.name} | ${r.from} | ${median(ms)} | ${Math.max(...ms)} | ${answers} |`);
}
