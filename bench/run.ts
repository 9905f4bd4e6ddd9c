/**
 * `npm run bench`: the whole suite, side by side in one run, then BENCHMARKS.md and docs/bench.svg.
 *
 * - P1/P2 (and the shed time): coordinator micro-benchmarks inside workerd (bench/wrangler.bench.toml
 *   under `wrangler dev`; the loops run in the Worker, so the dev proxy is not in the timed path).
 * - Memory: 10,000 queued waiters in the pure core, on Node (`process.memoryUsage`, after `gc()`).
 * - P3/P4: load through HTTP against `npm start` servers (bench/overload.sh; needs wrk and pgbouncer).
 *
 * `npm run bench -- --smoke`: one short iteration of the micro-benchmarks and the memory probe,
 * written to test-artifacts/ (CI runs this; nothing needs wrk or pgbouncer).
 * `npm run bench -- --no-overload`: everything but P3/P4.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { acquire, createPool } from "../src/core/index.ts";
import { renderChart } from "./chart.ts";
import { WRANGLER_BENCH_ENV } from "./wrangler-env.ts";

const smoke = process.argv.includes("--smoke");
const withOverload = !smoke && !process.argv.includes("--no-overload");
/** A port nobody listens on (the smoke run in `npm test` must not collide with anything). */
async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  return new Promise((resolve) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}
const port = process.env.BENCH_PORT ? Number(process.env.BENCH_PORT) : smoke ? await freePort() : 8830;
const base = `http://127.0.0.1:${port}`;

async function startBenchWorker(): Promise<() => Promise<void>> {
  const state = mkdtempSync(join(tmpdir(), "leasegate-bench-"));
  const child = spawn(
    "wrangler",
    [
      "dev",
      "-c",
      "bench/wrangler.bench.toml",
      "--ip",
      "127.0.0.1",
      "--port",
      String(port),
      "--persist-to",
      state,
      "--show-interactive-dev-session=false",
    ],
    { stdio: ["ignore", "pipe", "pipe"], detached: true, env: { ...process.env, ...WRANGLER_BENCH_ENV } },
  );
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const stop = async () => {
    try {
      process.kill(-child.pid!, "SIGTERM");
    } catch {}
    await new Promise((r) => setTimeout(r, 300));
    rmSync(state, { recursive: true, force: true });
  };
  for (let i = 0; i < 120; i++) {
    try {
      const r = await fetch(`${base}/ready`);
      await r.text();
      return stop;
    } catch {
      await new Promise((r) => setTimeout(r, 250));
    }
    if (child.exitCode !== null) break;
  }
  await stop();
  throw new Error(`the bench Worker did not start:\n${log}`);
}

async function get<T>(path: string): Promise<T> {
  const r = await fetch(base + path, { signal: AbortSignal.timeout(120_000) });
  const body = await r.text();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${body}`);
  return JSON.parse(body) as T;
}

interface P1 {
  pingUs: number;
  writeUs: number;
  unconfirmedUs: number;
  acquireUs: number;
  pairUs: number;
  clientUs: number;
  insideUs: number;
  beforeAcquireUs: number;
  beforeUs: number;
  writes: number[];
  unconfirmed: number[];
  ping: number[];
  acquires: number[];
  pairs: number[];
  client: number[];
  beforeAcquires: number[];
  before: number[];
}
interface P2 {
  pingPerS: number;
  writePerS: number;
  pairsPerS: number;
  coalescedPerS: number;
  beforePerS: number;
  coalescedCallsPerPair: number;
  writes: number[];
  ping: number[];
  pairs: number[];
  coalesced: number[];
  before: number[];
  c: number;
  heldAfter: number;
}
interface Shed {
  shedUs: number;
  pingUs: number;
}
interface Restart {
  granted: number;
  heldAfterRestart: number;
  recoveryMs: number;
  refusedInWindow: boolean;
  recovered: boolean;
}
interface BlockCalls {
  callsPerPair: number;
  pairUs: number;
  pingUs: number;
  heldAfter: number;
}
interface Block {
  n: number;
  c: number;
  maxBlock: number;
  sequential: BlockCalls;
  concurrent: BlockCalls;
}

/** Heap bytes per queued waiter in the pure core (what the coordinator keeps per waiter). */
function memoryProbe(waiters: number): { heapMb: number; bytesPerWaiter: number } {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with node --expose-gc (npm run bench does)");
  const pool = createPool({ limit: 1, maxQueue: waiters, waitMs: 60_000, leaseTtlMs: 30_000 });
  acquire(pool, { leaseId: crypto.randomUUID(), holder: "holder", waitMs: 0 }, 0);
  // The shell keeps one resolver closure per waiter next to the core's queue entry: count it too.
  const resolvers = new Map<string, (v: unknown) => void>();
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < waiters; i++) {
    const leaseId = crypto.randomUUID();
    acquire(pool, { leaseId, holder: `req-${i}`, waitMs: 60_000 }, 0);
    void new Promise((resolve) => resolvers.set(leaseId, resolve));
  }
  gc();
  const used = process.memoryUsage().heapUsed - before;
  if (pool.queue.length !== waiters) throw new Error(`expected ${waiters} queued, got ${pool.queue.length}`);
  return { heapMb: used / 1e6, bytesPerWaiter: used / waiters };
}

// workerd's clock moves in whole milliseconds, and only with I/O: even the smoke makes enough calls
// for every timing to span several ticks (a no-op call takes ~25 µs).
const micro = smoke
  ? { p1: "/p1?n=400&rounds=1", p2: "/p2?n=400&c=8&rounds=1", shed: "/shed?n=100", block: "/block?n=400&c=8&block=4" }
  : {
      p1: "/p1?n=1000&rounds=9",
      p2: "/p2?n=2000&c=32&rounds=9",
      shed: "/shed?n=400",
      block: "/block?n=2000&c=32&block=8",
    };

const started = Date.now();
const stop = await startBenchWorker();
let p1: P1, p2: P2, shed: Shed, restart: Restart, block: Block;
try {
  p1 = await get<P1>(micro.p1);
  p2 = await get<P2>(micro.p2);
  shed = await get<Shed>(micro.shed);
  restart = await get<Restart>("/restart-check");
  block = await get<Block>(micro.block);
} finally {
  await stop();
}
const memory = memoryProbe(smoke ? 1000 : 10_000);
console.log(JSON.stringify({ p1, p2, shed, restart, block, memory }, null, 1));
const blockDrained = block.sequential.heldAfter === 0 && block.concurrent.heldAfter === 0;
if (
  !(
    block.sequential.pairUs > 0 &&
    block.concurrent.pairUs > 0 &&
    p1.pingUs > 0 &&
    p1.writeUs > 0 &&
    p1.pairUs > 0 &&
    p1.acquireUs > 0 &&
    p1.beforeAcquireUs > 0 &&
    p1.clientUs > 0 &&
    p1.insideUs > 0 &&
    p2.pairsPerS > 0 &&
    p2.coalescedPerS > 0 &&
    p2.heldAfter === 0 &&
    p2.pingPerS > 0 &&
    restart.granted > 0 &&
    restart.heldAfterRestart === 0 &&
    restart.recoveryMs > 0 &&
    restart.refusedInWindow &&
    restart.recovered &&
    blockDrained
  )
) {
  console.error("bench: implausible results");
  process.exit(1);
}

interface OverloadRow {
  mode: string;
  requests: number;
  ok: number;
  errors: number;
  goodput: number;
  p50: string;
  p99: string;
  peak: number;
  /** CPU time of the whole machine per 2xx, ms. */
  cpuMs: number;
  /** CPU time of the server's processes (wrangler, workerd) per 2xx, ms. */
  serverCpuMs: number;
  /** CPU time of the server's busiest thread (workerd's, running the Worker and the Durable Object) per 2xx, ms. */
  threadCpuMs: number;
  /** How busy that thread was over the run, %. */
  threadBusy: number;
}
interface P4 {
  other: Record<string, number>;
  failures: number;
  ok: number;
  okP50: number;
  okP99: number;
  okServerP50: number;
  okServerP99: number;
  okLeaseP99: number;
  okDbP50: number;
  okDbP99: number;
  shed: number;
  shedP50: number;
  shedP99: number;
  shedServerP50: number;
  shedServerP99: number;
  timeoutServerP50: number;
  retryAfter: number;
  timeouts: number;
  serviceMs: number;
  deadlineMs: number;
}
let overload: Array<OverloadRow & { rounds: number[] }> = [];

/** Per setup, the round with the median goodput (its whole row), plus every round's goodput. */
function medianRounds(rows: OverloadRow[]): Array<OverloadRow & { rounds: number[] }> {
  const modes = [...new Set(rows.map((r) => r.mode))];
  return modes.map((mode) => {
    const runs = rows.filter((r) => r.mode === mode);
    const sorted = [...runs].sort((a, b) => a.goodput - b.goodput);
    return { ...sorted[Math.floor(sorted.length / 2)]!, rounds: runs.map((r) => r.goodput) };
  });
}
let p4: P4 | undefined;
if (withOverload) {
  const out = mkdtempSync(join(tmpdir(), "leasegate-overload-"));
  const run = spawnSync("bash", ["bench/overload.sh"], {
    stdio: "inherit",
    env: { ROLE: "leasegate_bench", DURATION: "8", ROUNDS: "5", ...process.env, RESULTS_DIR: out },
  });
  if (run.status !== 0) throw new Error("bench/overload.sh failed");
  overload = medianRounds(JSON.parse(readFileSync(join(out, "p3.json"), "utf8")) as OverloadRow[]);
  p4 = JSON.parse(readFileSync(join(out, "p4.json"), "utf8")) as P4;
  rmSync(out, { recursive: true, force: true });
}

const f = (x: number, d = 0) => x.toFixed(d);
/**
 * `xs` against `ys`, round by round (figures of the same round were measured next to each other),
 * then the median: the machine's speed drifts between rounds, a ratio of two medians would mix them.
 */
function perRound(xs: readonly number[], ys: readonly number[]): number {
  if (xs.length !== ys.length || xs.length === 0) throw new Error("perRound: figures of different runs");
  return median(xs.map((x, i) => x / ys[i]!));
}
function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
const p1AcquireRatio = perRound(p1.acquires, p1.ping);
const p1Ratio = perRound(p1.pairs, p1.ping);
const p2Ratio = perRound(p2.pairs, p2.ping);
const when = new Date().toISOString().slice(0, 16).replace("T", " ");
const lines = [
  "# Benchmarks",
  "",
  `Measured ${when} UTC on the shared 2-core development machine, every figure side by side in one`,
  "run of `npm run bench` (medians of alternating rounds; other people's tests were running, so",
  "expect ±30 % between runs — compare the ratios, not the absolute figures). Regenerate with",
  "`npm run bench` (needs `wrk` and `pgbouncer` for P3/P4; `npm run bench -- --no-overload` skips them).",
  "",
  "![benchmark chart](docs/bench.svg)",
  "",
  "## Coordinator micro-benchmarks, inside workerd",
  "",
  "A Worker loops RPCs to the production `ConnectionCoordinator` (leases in memory, no storage write per",
  "call, restart-safe by its recovery window: docs/reliability.md#durability-of-leases) and",
  "to a bench-only no-op Durable Object (`ping()` does nothing: the floor for any DO call), timing",
  "with `performance.now()` (bench/coordinator-bench-worker.ts, bench/wrangler.bench.toml). A concurrent (P2) timing",
  "closes with one no-op round trip: answers to many concurrent calls can leave before workerd has finished its own",
  "work for them, and that backlog is charged to the loop that caused it, not to the next one.",
  "Every `wrangler dev` of the benches runs without wrangler's local trace collector (`X_LOCAL_OBSERVABILITY=false`,",
  "bench/wrangler-env.ts): by default a streaming tail Worker receives trace events of every request and Durable",
  "Object call on the same workerd thread, about doubling a call's cost there; production has no such collector",
  "unless one is configured.",
  "The measurements take turns in rounds, in reverse order every other round (what one leaves behind, such as a",
  "durable write's checkpoint still going to disk, does not always fall on the same next one), and each one runs",
  'next to its no-op floor. "ratio to no-op" divides round by round and takes the median: the machine\'s speed',
  "drifts between rounds, and a ratio of two medians would mix rounds.",
  "",
  '"durable write" is the same no-op object changing one SQLite row per call: its answer waits for',
  'the commit — the floor of any call whose answer waits for a write. "before" is the coordinator as',
  "it was before leases moved to memory (a lease row per grant, group commit, each grant answered",
  "once durable; bench/baseline/), measured in the same alternating rounds.",
  `Deciding is a small part of a call: an acquire and a release called inside the object, with no RPC between them,`,
  `took ${f(p1.insideUs, 1)} µs per pair (${f((p1.insideUs / p1.pairUs) * 100, 1)} % of a pair over RPC); the rest of a call is the RPC and its arguments and answers.`,
  `A write whose answer does not wait for its commit (\`allowUnconfirmed\`) took ${f(p1.unconfirmedUs)} µs (${f(p1.unconfirmedUs / p1.pingUs, 2)}× no-op,`,
  `${f(p1.unconfirmedUs / p1.writeUs, 2)}× the durable write; rounds ${p1.unconfirmed.map((x) => f(x)).join(", ")}): ${
    p1.unconfirmedUs >= 0.8 * p1.writeUs
      ? "about as much, since the commit is spent on the object's thread whether or not the answer waits for it."
      : "not waiting saves the difference, at the price of answers a crash could take back."
  }`,
  "",
  "| | no-op DO RPC | durable write | now | ratio to no-op | ratio to the durable floor | before: rows, group commit | target |",
  "|---|---|---|---|---|---|---|---|",
  `| P1 acquire alone (1 RPC), µs | ${f(p1.pingUs)} | ${f(p1.writeUs)} (${f(p1.writeUs / p1.pingUs, 2)}×) | ${f(p1.acquireUs)} | **${f(p1AcquireRatio, 2)}×** | ${f(p1.acquireUs / p1.writeUs, 2)}× of ${f(p1.writeUs)} | ${f(p1.beforeAcquireUs)} (${f(p1.beforeAcquireUs / p1.pingUs, 2)}×) | ≤ 1.3× no-op |`,
  `| P1 acquire + release (2 RPCs), µs | ${f(p1.pingUs)} | | ${f(p1.pairUs)} | **${f(p1Ratio, 2)}×** | ${f(p1.pairUs / (2 * p1.writeUs), 2)}× of ${f(2 * p1.writeUs)} | ${f(p1.beforeUs)} (${f(p1.beforeUs / p1.pingUs, 2)}×) | ≤ 2.5× no-op |`,
  `| P2 ${p2.c} concurrent callers, ops/s | ${f(p2.pingPerS)} | ${f(p2.writePerS)} (${f((p2.writePerS / p2.pingPerS) * 100)} %) | ${f(p2.pairsPerS)} pairs/s | **${f(p2Ratio * 100)} %** | ${f((p2.pairsPerS / (p2.writePerS / 2)) * 100)} % of ${f(p2.writePerS / 2)} | ${f(p2.beforePerS)} (${f((p2.beforePerS / p2.pingPerS) * 100, 1)} %) | ≥ 40 % of no-op |`,
  `| P1 through \`Leases\` (a lone caller: single calls), µs | ${f(p1.pingUs)} | | ${f(p1.clientUs)} | **${f(perRound(p1.client, p1.ping), 2)}×** | ${f(p1.clientUs / (2 * p1.writeUs), 2)}× | | ≤ 1.5× no-op |`,
  `| P2 ${p2.c} callers sharing one \`Leases\` client (coalesced: ${f(p2.coalescedCallsPerPair, 2)} calls per pair), ops/s | ${f(p2.pingPerS)} | | ${f(p2.coalescedPerS)} pairs/s | **${f(perRound(p2.coalesced, p2.ping) * 100)} %** | ${f((p2.coalescedPerS / (p2.writePerS / 2)) * 100)} % | | ≥ 50 % of no-op |`,
  `| P1 through the lease block (\`ShardedLeases\`, \`LEASE_BLOCK=${block.maxBlock}\`), µs per pair, amortized | ${f(block.sequential.pingUs)} | | ${f(block.sequential.pairUs, 2)} | **${f(block.sequential.pairUs / block.sequential.pingUs, 3)}×** | | | ≤ 1.5× no-op |`,
  `| P2 ${block.c} callers through the lease block, ops/s | ${f(p2.pingPerS)} | | ${f(1e6 / block.concurrent.pairUs)} pairs/s | **${f((1e6 / block.concurrent.pairUs / p2.pingPerS) * 100)} %** | | | ≥ 50 % of no-op |`,
  `| shed: \`QUEUE_FULL\` answer, µs | ${f(shed.pingUs)} | | ${f(shed.shedUs)} (one RPC) | ${f(shed.shedUs / shed.pingUs, 2)}× | | | < 5 ms |`,
  "",
  "Rows 1–2: every acquire and release is a call of its own (callers in different isolates, or",
  "`coalesce: false`). Rows 3–4: the callers share one `Leases` client, as concurrent requests of one",
  "request handler or queue batch do; it coalesces calls made while one is in flight into",
  "`acquireMany`/`releaseMany` (one RPC for the batch; each lease still its own fence and TTL). A lone",
  "caller gains nothing from it and loses nothing.",
  "",
  `Restart check in the same run: ${restart.granted} leases granted concurrently, the object restarted:`,
  `it knew ${restart.heldAfterRestart} of them, granted nothing in its ${f(restart.recoveryMs)} ms recovery window${restart.refusedInWindow ? " (a newcomer was refused)" : ""},`,
  `and ${restart.recovered ? "re-registered" : "did NOT re-register"} one whose holder renewed (the bench pool's leases last 30 s).`,
  "",
  `Through the Worker's client with a per-isolate lease block (\`LEASE_BLOCK=${block.maxBlock}\`, \`ShardedLeases\`), ${block.n}`,
  `acquire + release pairs made **${block.sequential.callsPerPair.toFixed(3)}** coordinator calls per pair one after another and`,
  `**${block.concurrent.callsPerPair.toFixed(3)}** with ${block.c} concurrent callers (idle block leases returned afterwards included;`,
  "the object held 0 leases at the end). A pair served from the block costs no RPC and no write.",
  "workerd's clock does not move without I/O, so the block rows time the whole loop of pairs, closed by",
  "one no-op RPC whose round trip (measured just before) is taken off, and divide by the pairs: the",
  "figure includes the block's own coordinator calls. Its no-op figure is that round trip; the P2 block",
  "row divides by the P2 no-op rate. The block's price is elsewhere: an isolate keeps up to",
  "`LEASE_BLOCK` slots while it is busy (returned after `LEASE_BLOCK_IDLE_MS` idle), and never has more",
  "leases than that at once.",
  "",
  `Rounds — P1 no-op µs: ${p1.ping.map((x) => f(x)).join(", ")}; durable write µs: ${p1.writes.map((x) => f(x)).join(", ")}; acquire µs: ${p1.acquires.map((x) => f(x)).join(", ")}; pair µs: ${p1.pairs.map((x) => f(x)).join(", ")}; through Leases µs: ${p1.client.map((x) => f(x)).join(", ")}; before: acquire ${p1.beforeAcquires.map((x) => f(x)).join(", ")}, pair ${p1.before.map((x) => f(x)).join(", ")}.`,
  `P2 no-op/s: ${p2.ping.map((x) => f(x)).join(", ")}; durable writes/s: ${p2.writes.map((x) => f(x)).join(", ")}; pairs/s: ${p2.pairs.map((x) => f(x)).join(", ")}; coalesced pairs/s: ${p2.coalesced.map((x) => f(x)).join(", ")}; before: ${p2.before.map((x) => f(x)).join(", ")}.`,
  "",
  "## Memory",
  "",
  `${smoke ? 1000 : 10_000} queued waiters: **${f(memory.heapMb, 2)} MB** of heap (${f(memory.bytesPerWaiter)} bytes per waiter: the`,
  "core's queue entry plus the shell's resolver), measured on Node 22 with the pure core",
  "(`process.memoryUsage().heapUsed` after `gc()`), not inside workerd (which exposes no heap figure).",
  "",
];
if (overload.length > 0 && p4) {
  lines.push(
    "## P3 overload: 200 clients, a role with `CONNECTION LIMIT 20`",
    "",
    "`npm start` servers (real workerd, the Durable Object, Hyperdrive local mode: one connection per",
    "request) on `/api/pitches/trending`, `wrk -c200 --latency`; PgBouncer 1.18 (Debian) in",
    "transaction mode, `default_pool_size=18`, `max_client_conn=1000`; leasegate `LEASE_LIMIT=18`.",
    "Peak connections sampled from `pg_stat_activity` every 20 ms (a loop inside Postgres: one backend,",
    "no process per sample). CPU per 2xx: the machine's busy time (`/proc/stat`) and that of the server's",
    "processes (wrangler and its workerd: the Worker and the Durable Object), over the 2xx of the run;",
    "and that of the server's busiest thread, with how busy it was: under `wrangler dev` one workerd thread",
    "runs the Worker and every Durable Object, and it is the server's bottleneck.",
    "Command: `npm run bench:overload` (without wrangler's local trace collector, as above).",
    "The setups run one after another in the same run (8 s each). In front of PgBouncer, PgBouncer",
    "already caps the server side at 18, so the lease limit only decides how many callers PgBouncer",
    "queues itself (no deadlines, no visibility) and how many wait in leasegate's queue: shown with",
    "`LEASE_LIMIT=150` and `54`. The more leasegate gates, the more each admission costs (the",
    "coordinator's RPCs and hand-offs are on the path of every queued request). The `block` setups add",
    "the per-isolate lease block (`LEASE_BLOCK=18`): a finished lease serves the isolate's next request",
    "without a coordinator call, and the isolate holds at most 18 leases (`npm start` runs one isolate,",
    "so it keeps up to 18 and nearly every request is served from them).",
    "The `no-op call` setups are the floor of any admission that makes its own coordinator calls per",
    "request in this shape: PgBouncer alone, plus 1 or 2 calls per request to a Durable Object that does",
    "nothing (bench/p3-floor-worker.ts; 1 before the work, where an acquire goes, 1 after it, where a",
    "release goes). Each call is paid on the one workerd thread by both its sides.",
    "",
    `Each setup ran ${overload[0]!.rounds.length} times, the setups taking turns (every other round in reverse order); a row is the round with the median goodput,`,
    '"rounds" lists every round\'s goodput; "vs PgBouncer" divides round by round and takes the median.',
    "",
    "| setup | requests | 2xx | errors | goodput (2xx/s) | rounds | vs PgBouncer | p50 | p99 | peak connections | CPU ms per 2xx: machine, server | busiest thread: ms per 2xx (busy) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...overload.map((r) => {
      const bouncer = overload.find((o) => o.mode === "pgbouncer");
      const ratio =
        bouncer && r.mode.includes("pgbouncer") && r.mode !== "pgbouncer"
          ? `**${f(perRound(r.rounds, bouncer.rounds) * 100)} %**`
          : "";
      return `| ${r.mode} | ${r.requests} | ${r.ok} | ${r.errors} | ${f(r.goodput, 1)} | ${r.rounds.map((g) => f(g)).join(", ")} | ${ratio} | ${r.p50} | ${r.p99} | ${r.peak} | ${f(r.cpuMs, 2)}, ${f(r.serverCpuMs, 2)} | ${f(r.threadCpuMs, 2)} (${f(r.threadBusy)} %) |`;
    }),
    "",
    "## P4 no queue collapse: sustained overload, 2 s deadline",
    "",
    `leasegate with \`LEASE_LIMIT=18\`, \`LEASE_WAIT_MS=${p4.deadlineMs}\`, \`LEASE_MAX_QUEUE=40\`, 200 clients`,
    "(bench/load.ts: per-request status and latency; callers back off as Retry-After says, capped at 1 s).",
    "Latencies as the client saw them, through `wrangler dev`'s proxy on the saturated 2-core machine",
    "(every response waits in the proxy's queue of 200 connections), and as the Worker saw them: its",
    "`Server-Timing` header, from the request reaching the Worker to the response, split into the lease",
    'wait and the query (connect included). The "unloaded service" time is the median of 20 requests',
    "before the load; under the load the same query takes far longer (the 2 cores also run wrk, the dev",
    `proxy, workerd and Postgres). The shed answer's own cost is the \`QUEUE_FULL\` RPC in the micro-benchmarks (${f(shed.shedUs)} µs).`,
    "",
    "| | count | client p50 | client p99 | in the Worker p50 | in the Worker p99 | target |",
    "|---|---|---|---|---|---|---|",
    `| admitted (2xx) | ${p4.ok} | ${f(p4.okP50)} ms | ${f(p4.okP99)} ms | ${f(p4.okServerP50)} ms | ${f(p4.okServerP99)} ms | ≤ ${p4.deadlineMs} + ${f(p4.serviceMs)} ms (deadline + unloaded service) |`,
    `| … of which waiting for the lease | | | | | ${f(p4.okLeaseP99)} ms | ≤ ${p4.deadlineMs} ms (the deadline) |`,
    `| … of which the query, under this load | | | | ${f(p4.okDbP50)} ms | ${f(p4.okDbP99)} ms | |`,
    `| shed at once (503 \`QUEUE_FULL\`) | ${p4.shed} | ${f(p4.shedP50, 1)} ms | ${f(p4.shedP99, 1)} ms | ${f(p4.shedServerP50, 1)} ms | ${f(p4.shedServerP99, 1)} ms | < 5 ms, with Retry-After (${p4.retryAfter}/${p4.shed + p4.timeouts} had it) |`,
    `| timed out in queue (503 \`ACQUIRE_TIMEOUT\`) | ${p4.timeouts} | | | ${p4.timeouts > 0 ? `${f(p4.timeoutServerP50)} ms` : ""} | | at the deadline |`,
    `| other errors | ${Object.values(p4.other).reduce((a, b) => a + b, 0) + p4.failures} | ${JSON.stringify(p4.other)} | | | | 0 |`,
    "",
  );
}
lines.push(
  "## Separate benchmarks",
  "",
  "- postgres.js vs node-postgres through the same lease path: `npm run bench:drivers`, figures in",
  "  [docs/bench-drivers.md](docs/bench-drivers.md).",
  "- A spike of callers that give up (200 clients on 20 slots, half give up after 1 s and retry), before",
  "  and after short leases with a heartbeat: `npm run bench:spike`, figures in",
  "  [docs/reliability.md](docs/reliability.md#callers-that-vanish).",
  "- Sustained 5× overload from clients that retry after Retry-After, with and without the retry",
  "  budget, counting database attempts per request: `npm run bench:retries` (bench/retry-storm.ts).",
  "",
  `Suite time: ${f((Date.now() - started) / 1000)} s.`,
  "",
);

const chart = renderChart({
  title: "leasegate vs the floor and the alternatives (same run)",
  groups: [
    {
      label: "P1 µs per op, sequential (lower is better)",
      bars: [
        { name: "no-op RPC", value: p1.pingUs },
        { name: "durable write", value: p1.writeUs },
        { name: "acquire", value: p1.acquireUs },
        { name: "acquire+release", value: p1.pairUs },
        { name: "before: acquire+release", value: p1.beforeUs },
      ],
    },
    {
      label: "P2 ops/s, 32 callers (higher is better)",
      bars: [
        { name: "no-op RPCs/s", value: p2.pingPerS },
        { name: "durable writes/s", value: p2.writePerS },
        { name: "pairs/s", value: p2.pairsPerS },
        { name: "pairs/s, one client", value: p2.coalescedPerS },
        { name: "before: pairs/s", value: p2.beforePerS },
      ],
    },
    ...(overload.length > 0
      ? [{ label: "P3 goodput 2xx/s", bars: overload.map((r) => ({ name: r.mode, value: r.goodput })) }]
      : []),
  ],
});
if (smoke) {
  mkdirSync("test-artifacts", { recursive: true });
  writeFileSync("test-artifacts/BENCHMARKS.smoke.md", lines.join("\n"));
  writeFileSync("test-artifacts/bench.smoke.svg", chart);
  console.log("bench smoke: ok");
} else {
  mkdirSync("docs", { recursive: true });
  writeFileSync("BENCHMARKS.md", withKeptSections(lines.join("\n")));
  writeFileSync("docs/bench.svg", chart);
  console.log("wrote BENCHMARKS.md and docs/bench.svg");
}

/**
 * The new BENCHMARKS.md text with the sections other benchmarks write themselves (between
 * `<!-- bench:NAME start -->` and `<!-- bench:NAME end -->`, e.g. `npm run bench:topology -- --write`)
 * carried over from the current file, before "Separate benchmarks".
 */
function withKeptSections(text: string): string {
  let old = "";
  try {
    old = readFileSync("BENCHMARKS.md", "utf8");
  } catch {}
  const kept = [...old.matchAll(/<!-- bench:([\w-]+) start -->[\s\S]*?<!-- bench:\1 end -->/g)].map((m) => m[0]);
  if (kept.length === 0) return text;
  return text.replace("## Separate benchmarks", `${kept.join("\n\n")}\n\n## Separate benchmarks`);
}
