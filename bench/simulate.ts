/**
 * A discrete-event simulation of leasegate past one Durable Object: isolates send requests through
 * sharded coordinators (the real `src/core/` pool logic, one per shard) over a simulated network,
 * optionally batching leases per isolate (`src/core/lease-block.ts`). Time is simulated: the run is
 * deterministic for a seed and takes seconds of real time for many simulated seconds.
 *
 * Each coordinator is one thread: every call costs `callCostMs` of its time, so one object serves
 * at most 1000 / callCostMs calls/s — Cloudflare documents a soft limit of about 1,000 requests/s
 * per object, the default here.
 *
 * Production's commit wait: before, every grant waited for its write to be confirmed
 * (`commitWaitMs`, replicated SQLite: 5 ms by default, `--commit-wait-ms=N`); after, the object
 * answers from memory. The second table is the latency leasegate adds per request (its wait for a
 * lease: the round trip to the object, its queue, and the commit wait) before and after, side by
 * side, at 0, 10 and 40 ms one-way to the object, with and without the lease block.
 *
 *   node bench/simulate.ts            # the scenarios in the README's "Scaling" table, then before/after
 *   node bench/simulate.ts --smoke    # one short run (CI)
 */
import { acquire, createPool, release, tick } from "../src/core/pool.ts";
import type { Lease } from "../src/core/types.ts";
import { DEFAULT_CARRY_MS } from "../src/core/config.ts";
import {
  type BlockEffect,
  type BlockState,
  createBlock,
  finished,
  granted,
  observe,
  reap,
  refused,
  request,
} from "../src/core/lease-block.ts";
import { type ShardLoad, pickShard, shardLimits } from "../src/core/shard.ts";

export interface Scenario {
  name: string;
  ratePerSec: number;
  isolates: number;
  shards: number;
  limit: number;
  /** Lease batching per isolate; 0 = one acquire and one release per request. */
  maxBlock: number;
  idleMs: number;
  durationMs: number;
  oneWayMs: number;
  serviceMs: number;
  callCostMs: number;
  /**
   * How long a grant's answer waits for its write to be confirmed, ms: production's replicated
   * SQLite commit when every grant is written before it is answered (5–10 ms measured publicly);
   * 0 (the default) when the object answers from memory. The object's thread is not blocked meanwhile.
   */
  commitWaitMs?: number;
  waitMs: number;
  seed: number;
  /** With a block: hand finished leases back while callers wait at the coordinator (default true). */
  yieldToQueue?: boolean;
  /**
   * One object, no block: a finished lease's release waits this long for the isolate's next acquire
   * to carry it (`LEASE_RELEASE_CARRY_MS`), then goes out as a call of its own; 0 (the default):
   * every release is a call of its own.
   */
  carryMs?: number;
}

export interface Result {
  scenario: Scenario;
  offered: number;
  completed: number;
  goodputPerSec: number;
  shed: number;
  peakHeld: number;
  peakInUse: number;
  waitP50: number;
  waitP99: number;
  callsPerRequest: number;
  maxShardUtilization: number;
}

/** Mulberry32: a small seeded generator, so runs repeat exactly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A binary min-heap of timed events; ties keep insertion order. */
class Events {
  private heap: Array<{ at: number; seq: number; run: () => void }> = [];
  private seq = 0;
  push(at: number, run: () => void): void {
    const h = this.heap;
    h.push({ at, seq: this.seq++, run });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): { at: number; run: () => void } | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
  private less(a: { at: number; seq: number }, b: { at: number; seq: number }): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
}

function exactPercentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export function simulate(s: Scenario): Result {
  const random = rng(s.seed);
  const events = new Events();
  const limits = shardLimits(s.limit, s.shards);
  const shards = limits.map((limit) => ({
    pool: createPool({ limit: Math.max(1, limit), maxQueue: 100_000, waitMs: s.waitMs, leaseTtlMs: 30_000 }),
    usable: limit > 0,
    busyUntil: 0,
    busyMs: 0,
    waiters: new Map<string, (lease: Lease | null) => void>(),
    nextTick: Infinity,
  }));
  const loads: ShardLoad[][] = Array.from({ length: s.isolates }, () =>
    limits.map((limit) => ({ held: 0, waiting: 0, limit })),
  );
  type Held = { lease: Lease; shard: number };
  const blocks: BlockState<Held>[] = Array.from({ length: s.isolates }, () =>
    createBlock<Held>({ maxBlock: s.maxBlock, idleMs: s.idleMs, yieldToQueue: s.yieldToQueue !== false }),
  );
  const arrivals = new Map<string, number>();
  // Every wait, for exact percentiles (the core's histogram buckets are too coarse to compare a few ms).
  const waits: number[] = [];
  let calls = 0;
  let completed = 0;
  let shed = 0;
  let inUse = 0;
  let peakInUse = 0;
  let peakHeld = 0;
  let seq = 0;
  /** The simulated time of the event being run. */
  let clock = 0;
  let lastCompletion = 0;
  const heldNow = () => shards.reduce((n, sh) => n + sh.pool.leases.size, 0);

  /** Runs `work` on shard `i`'s single thread, after the calls already queued there. */
  function onShard(i: number, arriveAt: number, work: (now: number) => void): void {
    const sh = shards[i]!;
    calls++;
    const start = Math.max(arriveAt, sh.busyUntil);
    // The call's own end (busyUntil moves on as later calls are scheduled before this one runs).
    const done = start + s.callCostMs;
    sh.busyUntil = done;
    sh.busyMs += s.callCostMs;
    events.push(done, () => work(done));
  }

  function settle(i: number, fx: { granted: Lease[]; timedOut: Array<{ leaseId: string }> }): void {
    const sh = shards[i]!;
    for (const l of fx.granted) {
      sh.waiters.get(l.id)?.(l);
      sh.waiters.delete(l.id);
    }
    for (const w of fx.timedOut) {
      sh.waiters.get(w.leaseId)?.(null);
      sh.waiters.delete(w.leaseId);
    }
    peakHeld = Math.max(peakHeld, heldNow());
    // Every waiter has the same wait, so the head of the queue has the earliest deadline.
    const next = sh.pool.queue[0]?.deadline ?? Infinity;
    if (next < sh.nextTick) {
      sh.nextTick = next;
      events.push(next, () => {
        sh.nextTick = Infinity;
        settle(i, tick(sh.pool, next));
      });
    }
  }

  /** Sends one acquire from isolate `iso` to a shard picked by two random choices. */
  function sendAcquire(iso: number, now: number, onReply: (held: Held | null, at: number) => void): void {
    const usable = limits.map((l, k) => (l > 0 ? k : -1)).filter((k) => k >= 0);
    const a = usable[Math.floor(random() * usable.length)]!;
    const b = usable[Math.floor(random() * usable.length)]!;
    const shard = pickShard(loads[iso]!, a, b);
    const carried = outboxes[iso]!.splice(0);
    onShard(shard, now + s.oneWayMs, (t) => {
      releaseAll(carried, t);
      const sh = shards[shard]!;
      const id = `l${seq++}`;
      const reply = (lease: Lease | null, at: number) => {
        const load = { held: sh.pool.leases.size, waiting: sh.pool.queue.length, limit: limits[shard]! };
        // A grant leaves only once its write is confirmed (the output gate); a refusal writes nothing.
        const back = at + s.oneWayMs + (lease ? (s.commitWaitMs ?? 0) : 0);
        events.push(back, () => {
          loads[iso]![shard] = load;
          onReply(lease ? { lease, shard } : null, back);
        });
      };
      const { outcome, effects } = acquire(sh.pool, { leaseId: id, holder: `isolate-${iso}` }, t);
      if (outcome.status === "granted") reply(outcome.lease, t);
      else if (outcome.status === "rejected") reply(null, t);
      else sh.waiters.set(id, (lease) => reply(lease, clock));
      settle(shard, effects);
    });
  }

  /** The block's answer to acquire `ask` it sent. */
  function blockReply(iso: number, ask: number, sentAt: number): (held: Held | null, at: number) => void {
    return (held, at) => {
      if (!held) return perform(iso, refused(blocks[iso]!, ask, at, false), at);
      // The simulator's queries are short: a lease lives its TTL and may be reused all along.
      const life = { endsAt: held.lease.expiresAt, reuseUntil: Number.POSITIVE_INFINITY };
      perform(iso, granted(blocks[iso]!, ask, held, life, at), at);
      // The queue of the shard that just answered (others' reports may be old), as of the call sent at sentAt.
      // Only one shard's queue says who waits for every lease the block holds (as in ShardedLeases).
      const asked = shards.length === 1 ? sentAt : Number.NEGATIVE_INFINITY;
      perform(iso, observe(blocks[iso]!, loads[iso]![held.shard]!.waiting, at, asked), at);
    };
  }

  /** Releases on the object's thread at `t`, in order (one call, or carried by an acquire). */
  function releaseAll(list: readonly Held[], t: number): void {
    for (const held of list) {
      const sh = shards[held.shard]!;
      settle(held.shard, release(sh.pool, { leaseId: held.lease.id, fence: held.lease.fence }, t).effects);
    }
  }

  function sendRelease(held: Held, now: number): void {
    onShard(held.shard, now + s.oneWayMs, (t) => releaseAll([held], t));
  }

  // Per isolate, finished leases whose release waits for an acquire to carry it (`carryMs`).
  const carryMs = s.shards === 1 && s.maxBlock === 0 ? (s.carryMs ?? 0) : 0;
  const outboxes: Held[][] = Array.from({ length: s.isolates }, () => []);

  function giveBack(iso: number, held: Held, now: number): void {
    if (carryMs === 0) {
      sendRelease(held, now);
      return;
    }
    outboxes[iso]!.push(held);
    events.push(now + carryMs, () => {
      const waiting = outboxes[iso]!;
      if (!waiting.includes(held)) return;
      outboxes[iso] = [];
      onShard(held.shard, now + carryMs + s.oneWayMs, (t) => releaseAll(waiting, t));
    });
  }

  function perform(iso: number, effects: BlockEffect<Held>[], now: number): void {
    for (const fx of effects) {
      if (fx.kind === "acquire") sendAcquire(iso, now, blockReply(iso, fx.ask, now));
      else if (fx.kind === "release") sendRelease(fx.lease, now);
      else if (fx.kind === "fail") {
        shed++;
        arrivals.delete(fx.request);
      } else start(iso, fx.request, fx.lease, now, fx.generation);
    }
  }

  /** Runs one request's query with `held` (hand-on `generation` when batching); then hands the lease on or releases it. */
  function start(iso: number, requestId: string, held: Held, now: number, generation = 0): void {
    const arrived = arrivals.get(requestId)!;
    arrivals.delete(requestId);
    waits.push(now - arrived);
    inUse++;
    peakInUse = Math.max(peakInUse, inUse);
    const done = now + s.serviceMs * (0.5 + random());
    events.push(done, () => {
      inUse--;
      completed++;
      lastCompletion = done;
      if (s.maxBlock === 0) return giveBack(iso, held, done);
      perform(iso, finished(blocks[iso]!, generation, done) ?? [], done);
      events.push(done + s.idleMs, () => perform(iso, reap(blocks[iso]!, done + s.idleMs), done + s.idleMs));
    });
  }

  // Poisson arrivals spread uniformly over isolates.
  let offered = 0;
  for (let t = 0; ; ) {
    t += -Math.log(1 - random()) * (1000 / s.ratePerSec);
    if (t >= s.durationMs) break;
    offered++;
    const iso = Math.floor(random() * s.isolates);
    const id = `r${offered}`;
    events.push(t, () => {
      arrivals.set(id, t);
      if (s.maxBlock > 0) return perform(iso, request(blocks[iso]!, id, t, t + s.waitMs), t);
      // No batching: one acquire and one release per request.
      sendAcquire(iso, t, (held, at) => {
        // The caller gives up at its deadline, also while its call waits in a busy object's input.
        if (held && at - t <= s.waitMs) return start(iso, id, held, at);
        if (held) sendRelease(held, at);
        shed++;
        arrivals.delete(id);
      });
    });
  }
  for (let e = events.pop(); e; e = events.pop()) {
    clock = e.at;
    e.run();
  }

  // A backlog may run past the arrivals: rates are over the time until the last request finished.
  const elapsed = Math.max(s.durationMs, lastCompletion);
  const maxBusy = Math.max(...shards.map((sh) => sh.busyMs));
  return {
    scenario: s,
    offered,
    completed,
    goodputPerSec: Math.round((completed / elapsed) * 1000),
    shed,
    peakHeld,
    peakInUse,
    waitP50: Math.round(exactPercentile(waits, 0.5) * 10) / 10,
    waitP99: Math.round(exactPercentile(waits, 0.99) * 10) / 10,
    callsPerRequest: Math.round((calls / Math.max(1, completed)) * 100) / 100,
    // Demand on the busiest object while requests arrive; above 1 it cannot keep up.
    maxShardUtilization: Math.round((maxBusy / s.durationMs) * 100) / 100,
  };
}

const base: Scenario = {
  name: "",
  ratePerSec: 10_000,
  isolates: 200,
  shards: 1,
  limit: 400,
  maxBlock: 0,
  idleMs: 0,
  durationMs: 3_000,
  oneWayMs: 10,
  serviceMs: 5,
  callCostMs: 1,
  commitWaitMs: 0,
  waitMs: 2_000,
  seed: 7,
};

export const SCENARIOS: Scenario[] = [
  { ...base, name: "1 shard, 400 req/s", ratePerSec: 400 },
  { ...base, name: "1 shard, 600 req/s", ratePerSec: 600 },
  { ...base, name: "1 shard, 10,000 req/s" },
  { ...base, name: "16 shards, 10,000 req/s", shards: 16 },
  { ...base, name: "32 shards, 10,000 req/s", shards: 32 },
  { ...base, name: "16 shards + batching (block 4, idle 20 ms)", shards: 16, maxBlock: 4, idleMs: 20 },
  { ...base, name: "8 shards + batching (block 4, idle 20 ms)", shards: 8, maxBlock: 4, idleMs: 20 },
];

function row(r: Result): string {
  return `| ${r.scenario.name} | ${r.offered} | ${r.goodputPerSec} | ${r.shed} | ${r.peakHeld} / ${r.scenario.limit} | ${r.waitP50} | ${r.waitP99} | ${r.callsPerRequest} | ${r.maxShardUtilization} |`;
}

/**
 * The latency leasegate adds per request (wait for a lease, ms) before (every grant waits
 * `commitWaitMs` for its write) and after (answers from memory), for one object below saturation.
 *
 * @example
 * for (const r of addedLatency(5)) console.log(r.oneWayMs, r.before.waitP50, r.after.waitP50);
 */
export function addedLatency(
  commitWaitMs: number,
  durationMs = 3_000,
): Array<{ oneWayMs: number; maxBlock: number; before: Result; after: Result }> {
  const out = [];
  for (const maxBlock of [0, 4]) {
    for (const oneWayMs of [0, 10, 40]) {
      // Few busy isolates (as in the topology bench): with 200, each sees too few requests to reuse a lease.
      const scenario = {
        ...base,
        name: "",
        ratePerSec: 400,
        isolates: 4,
        durationMs,
        oneWayMs,
        maxBlock,
        idleMs: maxBlock ? 20 : 0,
      };
      out.push({
        oneWayMs,
        maxBlock,
        // Before: every grant written and each release a call; after: from memory, releases carried.
        before: simulate({ ...scenario, commitWaitMs }),
        after: simulate({ ...scenario, commitWaitMs: 0, carryMs: DEFAULT_CARRY_MS }),
      });
    }
  }
  return out;
}

if (import.meta.main) {
  const smoke = process.argv.includes("--smoke");
  const commitArg = process.argv.find((a) => a.startsWith("--commit-wait-ms="));
  const commitWaitMs = commitArg ? Number(commitArg.slice("--commit-wait-ms=".length)) : 5;
  if (!(commitWaitMs >= 0)) throw new Error(`--commit-wait-ms must be a number of ms >= 0, got ${commitArg}`);
  const scenarios = smoke
    ? [
        {
          ...base,
          name: "smoke: 2 shards + batching",
          shards: 2,
          maxBlock: 2,
          idleMs: 5,
          durationMs: 200,
          ratePerSec: 2_000,
        },
      ]
    : SCENARIOS;
  console.log(
    `simulated ${scenarios[0]!.durationMs / 1000} s each; ${base.isolates} isolates, one-way latency ${base.oneWayMs} ms, query ${base.serviceMs} ms (±50 %), ${base.callCostMs} ms per coordinator call, deadline ${base.waitMs} ms, grants answered from memory`,
  );
  console.log(
    "| scenario | requests | goodput/s | shed | peak held / limit | wait p50 ms | wait p99 ms | coordinator calls/request | busiest shard load (1 = saturated) |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const s of scenarios) {
    const r = simulate(s);
    if (r.peakHeld > s.limit) throw new Error(`global limit broken: ${r.peakHeld} > ${s.limit}`);
    console.log(row(r));
  }
  console.log(
    `\nlatency leasegate adds per request (wait for a lease, ms), one object, 400 req/s from 4 isolates, before (every grant waits ${commitWaitMs} ms for its commit) → after (answered from memory)`,
  );
  console.log(
    "| one-way to the object | lease block | added p50 before → after | added p99 before → after | calls/request |",
  );
  console.log("|---|---|---|---|---|");
  for (const r of addedLatency(commitWaitMs, smoke ? 300 : 3_000)) {
    const b = r.before;
    const a = r.after;
    for (const x of [b, a])
      if (x.peakHeld > x.scenario.limit) throw new Error(`global limit broken: ${x.peakHeld} > ${x.scenario.limit}`);
    console.log(
      `| ${r.oneWayMs} ms | ${r.maxBlock ? `${r.maxBlock}, idle 20 ms` : "none"} | ${b.waitP50} → ${a.waitP50} | ${b.waitP99} → ${a.waitP99} | ${b.callsPerRequest} → ${a.callsPerRequest} |`,
    );
  }
}
