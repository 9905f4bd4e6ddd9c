/**
 * `npm run bench:spike`: a spike in which half the callers give up, before and after leases that
 * must be renewed. 200 clients on a 20-slot pool; each request holds its slot for 100–300 ms of
 * work. Half the clients are impatient: a request not done after 1 s is abandoned the way
 * production cancels a Worker request whose client disconnected — no further I/O leaves it, no
 * timer of it runs, no `finally` — and the client retries at once with a new request.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:spike
 *
 * Two runs, side by side, on the same engine:
 *   before — a 30 s lease, no heartbeat, no claim, FIFO, no local shed (the old defaults: a vanished caller's slot
 *            waits for its TTL, also one granted to it after it was gone);
 *   after  — the defaults: a 1.5 s lease renewed by `withLease`'s heartbeat every 500 ms, a grant
 *            from the queue that lives one claim window until its caller claims it (four measured
 *            round trips, 500–1000 ms), the default queue order (`LEASE_QUEUE=adaptive`) and the
 *            isolate's local shed (`LEASE_LOCAL_SHED`);
 *   after + signal — the same, and a caller that gives up also aborts its `signal` (what a Node or
 *            Deno caller can do; a cancelled Worker request cannot): the local adapter withdraws it.
 *   no local shed — `after` with `LEASE_LOCAL_SHED=off`: every acquire goes to the coordinator.
 *   adaptive, fifo — `after` with `LEASE_QUEUE` set (the default, `adaptive`, is what `after` runs):
 *            under a standing queue `adaptive` serves the newest waiter first (the one most likely
 *            still there) and the oldest meet their deadlines; `fifo` serves the oldest first.
 *
 * It drives the local adapter (PostgresCoordinator: the same core and engine as the Durable Object)
 * on the real Postgres, in this one process: a Durable Object behind `wrangler dev` would cap the
 * run at the dev proxy's ~1,200 req/s and add nothing the engine does not already decide alike.
 * The work under a lease is a timer, not a query: this measures who holds the pool, not Postgres.
 *
 * Env: BENCH_SECONDS (15 per run), BENCH_CLIENTS (200), LEASE_LIMIT (20), BENCH_RUNS (the runs to
 * make, by name, comma-separated; default all).
 */
import postgres from "postgres";
import { PostgresCoordinator } from "../local/postgres-coordinator.ts";
import { type Coordinator, Leases } from "../src/client/leases.ts";
import {
  type AcquireOptions,
  DEFAULT_CONFIG,
  type LeaseRef,
  type QueueMode,
  isLeaseError,
  poolSettings,
} from "../src/core/index.ts";

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const seconds = Number(process.env.BENCH_SECONDS ?? "15");
const clients = Number(process.env.BENCH_CLIENTS ?? "200");
const limit = Number(process.env.LEASE_LIMIT ?? "20");
const GIVE_UP_MS = 1000;
const WAIT_MS = 5000;
const SAMPLE_MS = 100;
const never = new Promise<never>(() => {});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request's view of the coordinator: once `gone`, nothing is sent and no answer arrives. */
class Vanishing implements Coordinator {
  gone = false;
  readonly #inner: Coordinator;
  constructor(inner: Coordinator) {
    this.#inner = inner;
  }
  #gate<T>(send: () => Promise<T>): Promise<T> {
    if (this.gone) return never;
    return send().then((answer) => (this.gone ? never : answer));
  }
  /** Forwards a caller's signal, so the local adapter can withdraw a waiter that gave up. */
  readonly abortable = true;
  acquire(options?: AcquireOptions, signal?: AbortSignal) {
    return this.#gate(() => this.#inner.acquire(options, signal));
  }
  release(ref: LeaseRef) {
    return this.#gate(() => this.#inner.release(ref));
  }
  renew(ref: LeaseRef, ttlMs?: number) {
    return this.#gate(() => this.#inner.renew(ref, ttlMs));
  }
  stats() {
    return this.#inner.stats();
  }
}

interface Mode {
  name: string;
  ttlMs: number;
  heartbeatMs: number | undefined;
  claimMs: number | undefined;
  /** Impatient callers also abort a signal when they give up (a Node or Deno caller can). */
  signal?: boolean;
  /** `LEASE_QUEUE`; unset: the default. */
  queue?: QueueMode;
  /** `false`: every acquire goes to the coordinator (`LEASE_LOCAL_SHED=off`); unset: the default. */
  localShed?: false;
}

interface Outcome {
  mode: Mode;
  done: number;
  gaveUp: number;
  refused: Record<string, number>;
  latenciesMs: number[];
  fullyGoneMs: number;
  goneSlotSeconds: number;
  samples: number;
  /** The claim window the run's clients asked for at its end, ms (undefined: no claim). */
  claimWindowMs: number | undefined;
}

async function run(mode: Mode): Promise<Outcome> {
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const pool = `spike-${process.pid}-${mode.name.replace(/\W+/g, "-")}`;
  const coordinator = new PostgresCoordinator({
    sql,
    pool,
    // The queue mode as the setting reads it: LEASE_QUEUE, or the default when the run names none.
    config: {
      ...poolSettings({ LEASE_QUEUE: mode.queue }).config,
      limit,
      maxQueue: 10_000,
      waitMs: WAIT_MS,
      leaseTtlMs: mode.ttlMs,
    },
  });
  await coordinator.ready();
  const gone = new Set<string>();
  const out: Outcome = {
    mode,
    done: 0,
    gaveUp: 0,
    refused: {},
    latenciesMs: [],
    fullyGoneMs: 0,
    goneSlotSeconds: 0,
    samples: 0,
    claimWindowMs: undefined,
  };
  const endAt = Date.now() + seconds * 1000;
  let seq = 0;

  const client = async (impatient: boolean) => {
    while (Date.now() < endAt) {
      const holder = `r${++seq}`;
      const view = new Vanishing(coordinator);
      // Named like workerPool's clients: a client per request, round trips kept per pool in the process.
      const leases = new Leases(view, { holder, claimMs: mode.claimMs, pool, localShed: mode.localShed });
      const started = performance.now();
      const giveUp = new AbortController();
      const signal = mode.signal && impatient ? giveUp.signal : undefined;
      const request = leases.withLease(() => sleep(100 + Math.random() * 200), {
        ttlMs: mode.ttlMs,
        heartbeatMs: mode.heartbeatMs,
        waitMs: WAIT_MS,
        signal,
      });
      const answer = await Promise.race([
        request.then(
          () => "done" as const,
          (error: unknown) => (isLeaseError(error) ? error.code : (error as Error).name),
        ),
        impatient ? sleep(GIVE_UP_MS).then(() => "gave up" as const) : never,
      ]);
      if (answer === "done") {
        out.done++;
        out.latenciesMs.push(performance.now() - started);
      } else if (answer === "gave up") {
        // The client disconnected: production cancels the request right here.
        view.gone = true;
        giveUp.abort();
        gone.add(holder);
        out.gaveUp++;
      } else {
        out.refused[answer] = (out.refused[answer] ?? 0) + 1;
        await sleep(50);
      }
    }
  };

  const sampler = (async () => {
    while (Date.now() < endAt) {
      const s = await coordinator.stats();
      const goneHeld = s.leases.filter((l) => gone.has(l.holder)).length;
      out.samples++;
      out.goneSlotSeconds += (goneHeld * SAMPLE_MS) / 1000;
      if (goneHeld >= s.limit) out.fullyGoneMs += SAMPLE_MS;
      await sleep(SAMPLE_MS);
    }
  })();

  await Promise.all([sampler, ...Array.from({ length: clients }, (_, i) => client(i % 2 === 0))]);
  out.claimWindowMs = new Leases(coordinator, { claimMs: mode.claimMs, pool }).claimMs;
  await coordinator.close();
  for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"])
    await sql`DELETE FROM ${sql(t)} WHERE pool = ${pool}`;
  await sql.end();
  return out;
}

function pct(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const only = process.env.BENCH_RUNS?.split(",").map((s) => s.trim());
const all: Mode[] = [
  { name: "before", ttlMs: 30_000, heartbeatMs: 0, claimMs: 0, queue: "fifo", localShed: false },
  { name: "after", ttlMs: DEFAULT_CONFIG.leaseTtlMs, heartbeatMs: undefined, claimMs: undefined },
  {
    name: "after + signal",
    ttlMs: DEFAULT_CONFIG.leaseTtlMs,
    heartbeatMs: undefined,
    claimMs: undefined,
    signal: true,
  },
  // Same as `after` but for LEASE_QUEUE; run last but one, so the two are compared side by side.
  { name: "adaptive", ttlMs: DEFAULT_CONFIG.leaseTtlMs, heartbeatMs: undefined, claimMs: undefined, queue: "adaptive" },
  { name: "fifo", ttlMs: DEFAULT_CONFIG.leaseTtlMs, heartbeatMs: undefined, claimMs: undefined, queue: "fifo" },
  // Same as `after` but every acquire goes to the coordinator (LEASE_LOCAL_SHED=off).
  {
    name: "no local shed",
    ttlMs: DEFAULT_CONFIG.leaseTtlMs,
    heartbeatMs: undefined,
    claimMs: undefined,
    localShed: false,
  },
];
const modes = only ? all.filter((m) => only.includes(m.name)) : all;
console.log(
  `spike: ${clients} clients (half give up after ${GIVE_UP_MS} ms and retry), ${limit} slots, work 100-300 ms, ${seconds} s per run, local adapter on ${new URL(url).host}`,
);
const results: Outcome[] = [];
for (const mode of modes) results.push(await run(mode));
const row = (cells: Array<string | number>) => `| ${cells.join(" | ")} |`;
console.log(
  row([
    "run",
    "lease TTL / heartbeat / claim / queue",
    "goodput req/s",
    "p50 ms",
    "p99 ms",
    "gave up",
    "refused",
    "pool fully held by gone callers",
    "slots held by gone callers (mean)",
    "gone callers' slot share",
  ]),
);
console.log(row(["---", "---", "---", "---", "---", "---", "---", "---", "---", "---"]));
for (const r of results) {
  const refused =
    Object.entries(r.refused)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ") || "0";
  const beat = r.mode.heartbeatMs === 0 ? "none" : `${Math.floor(r.mode.ttlMs / 3)} ms`;
  console.log(
    row([
      r.mode.name,
      `${r.mode.ttlMs} ms / ${beat} / ${r.claimWindowMs === undefined ? "none" : `${r.claimWindowMs} ms`} / ${r.mode.queue ?? "default"}`,
      (r.done / seconds).toFixed(1),
      pct(r.latenciesMs, 0.5).toFixed(0),
      pct(r.latenciesMs, 0.99).toFixed(0),
      r.gaveUp,
      refused,
      `${(r.fullyGoneMs / 1000).toFixed(1)} s of ${seconds} s`,
      `${(r.goneSlotSeconds / seconds).toFixed(1)} of ${limit}`,
      `${((100 * r.goneSlotSeconds) / seconds / limit).toFixed(0)} %`,
    ]),
  );
}
process.exit(0);
