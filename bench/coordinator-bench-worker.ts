/**
 * Coordinator micro-benchmarks that run inside workerd: the Worker loops RPCs to the production
 * `ConnectionCoordinator` and to `NoopObject` (the physical floor: an RPC that does nothing) and
 * times them with `performance.now()` (workerd advances the clock after I/O, and every RPC is I/O).
 * The two are measured in alternating rounds, so machine noise hits both alike.
 *
 * GET /p1?n=N           sequential: no-op RPC vs acquire alone and acquire+release, per call in µs (also
 *                       through `Leases`), taken in turn call by call; today's coordinator and the one
 *                       before (bench/baseline/) in rounds of their own
 * GET /p2?n=N&c=C       C concurrent loops sharing N calls: no-op RPCs/s vs acquire+release pairs/s,
 *                       each caller with its own calls, and all callers sharing one `Leases` client
 *                       (which coalesces concurrent calls into batches; calls per pair counted)
 * GET /shed?n=N         a full pool and queue: how long a QUEUE_FULL answer takes, in µs
 * GET /restart-check    grants leases concurrently, restarts the object: it must grant nothing while
 *                       they may be alive, and re-register one its holder renews
 * GET /block?n=N&c=C    through the Worker's client with a per-isolate lease block: coordinator
 *                       calls and µs per acquire+release, sequential and with C concurrent callers
 *
 * The floor of a durable call is measured too: `NoopObject.write()` changes one SQLite row, so its
 * answer waits for a commit exactly as a grant's does.
 */
import { DurableObject } from "cloudflare:workers";
import { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
import { DurableRowsCoordinator } from "./baseline/durable-rows-coordinator.ts";
import { type Coordinator as LeaseCoordinator, Leases } from "../src/client/leases.ts";
import { ShardedLeases, createIsolateShards } from "../src/client/sharded-leases.ts";
import { leaseRef } from "../src/core/protocol.ts";

export { DurableRowsCoordinator };

/**
 * The production coordinator plus one bench-only method to crash it (as a deploy or an eviction
 * would), so the bench can check that coalesced writes were durable. Not in the production API.
 */
export class BenchCoordinator extends ConnectionCoordinator {
  /** @example await stub.crash().catch(() => {}) */
  async crash(): Promise<void> {
    this.ctx.abort("bench restart");
  }

  /**
   * `n` acquire + release pairs called inside the object, no RPC between them: what deciding
   * costs, timed by the caller around this one call. @example await stub.pairsInside(20_000)
   */
  async pairsInside(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const r = await this.acquire({ holder: "bench", waitMs: 2000 });
      if (!r.ok) throw new Error(`acquire failed: ${r.code}`);
      await this.release({ leaseId: r.lease.id, fence: r.lease.fence });
    }
  }
}

/** The floor: a Durable Object whose only RPC does nothing. Bench-only; not in the production API. */
export class NoopObject extends DurableObject {
  #writes = 0;

  /** @example await env.NOOP_DO.getByName("x").ping() */
  async ping(): Promise<{ ok: true }> {
    return { ok: true };
  }

  /**
   * One change whose answer does not wait for its commit (`allowUnconfirmed`): what skipping the
   * durability wait would buy. @example await stub.writeUnconfirmed()
   */
  async writeUnconfirmed(): Promise<{ ok: true }> {
    void this.ctx.storage.put("counter", ++this.#writes, { allowUnconfirmed: true });
    return { ok: true };
  }

  /** One durable change: the answer waits for its commit, like a grant's. @example await stub.write() */
  async write(): Promise<{ ok: true }> {
    if (this.#writes === 0)
      this.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)");
    this.ctx.storage.sql.exec("INSERT OR REPLACE INTO counter (id, value) VALUES (1, ?)", ++this.#writes);
    return { ok: true };
  }
}

/** Counts the calls that reach the coordinator through a client. */
function counted(stub: DurableObjectStub<BenchCoordinator>, calls: { n: number }): LeaseCoordinator {
  return {
    acquire: (o) => {
      calls.n++;
      return stub.acquire(o);
    },
    release: (r) => {
      calls.n++;
      return stub.release(r);
    },
    renew: (r, t) => {
      calls.n++;
      return stub.renew(r, t);
    },
    stats: () => stub.stats(),
    acquireMany: (list) => {
      calls.n++;
      return stub.acquireMany(list);
    },
    releaseMany: (refs) => {
      calls.n++;
      return stub.releaseMany(refs);
    },
  };
}

/** One acquire + release through the application-facing client. */
async function clientPair(leases: Leases): Promise<void> {
  await leases.release(await leases.acquire({ holder: "bench", waitMs: 2000 }));
}

interface BenchEnv {
  COORDINATOR_DO: DurableObjectNamespace<BenchCoordinator>;
  NOOP_DO: DurableObjectNamespace<NoopObject>;
  BASELINE_DO: DurableObjectNamespace<DurableRowsCoordinator>;
}

type Coordinator = DurableObjectStub<BenchCoordinator> | DurableObjectStub<DurableRowsCoordinator>;

async function pair(stub: Coordinator): Promise<void> {
  const r = await stub.acquire({ holder: "bench", waitMs: 2000 });
  if (!r.ok) throw new Error(`acquire failed: ${r.code}`);
  const rel = await stub.release({ leaseId: r.lease.id, fence: r.lease.fence });
  if (!rel.ok) throw new Error(`release failed: ${rel.code}`);
}

/** One acquire, as an op of `timeInterleaved`: its release comes back to run outside the timed block. */
async function acquireOp(stub: Coordinator): Promise<() => Promise<unknown>> {
  const r = await stub.acquire({ holder: "bench", waitMs: 2000 });
  if (!r.ok) throw new Error(`acquire failed: ${r.code}`);
  return () => stub.release({ leaseId: r.lease.id, fence: r.lease.fence });
}

/**
 * µs per call of each of `ops`, measured in one loop that takes them in turn, a block of `block`
 * calls at a time (the first op rotating each time): every op sees the machine as it is at that
 * moment, so a speed that drifts within a round cannot favour one. A block spans a few ticks of
 * workerd's millisecond clock (one call would read 0 or 1 ms). What an op returns runs after its
 * block, untimed (an acquire's release).
 */
async function timeInterleaved<K extends string>(
  n: number,
  block: number,
  ops: Record<K, () => Promise<(() => Promise<unknown>) | undefined>>,
): Promise<Record<K, number>> {
  const names = Object.keys(ops) as K[];
  const totals = Object.fromEntries(names.map((name) => [name, 0])) as Record<K, number>;
  const blocks = Math.max(1, Math.round(n / block));
  for (let i = 0; i < blocks; i++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(i + j) % names.length]!;
      const after: Array<() => Promise<unknown>> = [];
      const t0 = performance.now();
      for (let k = 0; k < block; k++) {
        const then = await ops[name]();
        if (then) after.push(then);
      }
      totals[name] += performance.now() - t0;
      for (const then of after) await then();
    }
  }
  for (const name of names) totals[name] = (totals[name] * 1000) / (blocks * block);
  return totals;
}

async function timeSequential(n: number, fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn();
  return ((performance.now() - t0) * 1000) / n;
}

/**
 * Operations per second from `c` loops sharing `n` calls of `fn` (a count, not a time window:
 * workerd's clock only moves with I/O, so a time-bounded loop stops late or early). The window
 * closes with one round trip of `settle` (a no-op RPC): answers to many concurrent calls can come
 * back before workerd has finished its own work for those calls, and that backlog (hundreds of ms
 * after 2000 concurrent pairs) is then paid by the loop that caused it, not by the next one.
 */
async function timeConcurrent(
  n: number,
  c: number,
  fn: () => Promise<unknown>,
  settle: () => Promise<unknown>,
): Promise<number> {
  let left = n;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (left-- > 0) await fn();
    }),
  );
  await settle();
  return n / ((performance.now() - t0) / 1000);
}

/**
 * Each measurement once per round, taking turns (machine noise hits all alike), in reverse order
 * every other round: what one measurement leaves behind (a durable write's checkpoint still going
 * to disk) would otherwise always fall on the same next one. List a figure and its no-op floor
 * next to each other, and the durable writers last. Every round's figure by name; bench/run.ts
 * divides figures round by round.
 */
async function alternate<K extends string>(
  rounds: number,
  measures: Record<K, () => Promise<number>>,
): Promise<Record<K, number[]>> {
  const names = Object.keys(measures) as K[];
  const figures = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  for (let r = 0; r < rounds; r++) {
    for (const name of r % 2 === 0 ? names : [...names].reverse()) figures[name].push(await measures[name]());
  }
  return figures;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function int(url: URL, name: string, fallback: number): number {
  const v = Number(url.searchParams.get(name) ?? fallback);
  return Number.isInteger(v) && v > 0 ? v : fallback;
}

export default {
  async fetch(request: Request, env: BenchEnv): Promise<Response> {
    const url = new URL(request.url);
    const run = url.searchParams.get("run") ?? crypto.randomUUID();
    const noop = env.NOOP_DO.getByName(`noop-${run}`);
    const coord = env.COORDINATOR_DO.getByName(`bench-${url.pathname}-${run}`);
    const rounds = int(url, "rounds", 3);
    if (url.pathname === "/ready") return new Response("ready\n");
    await noop.ping();
    await noop.write();
    const baseline = env.BASELINE_DO.getByName(`baseline-${url.pathname}-${run}`);
    await pair(coord); // warm the objects up before timing
    await pair(baseline);
    if (url.pathname === "/p1") {
      const n = int(url, "n", 500);
      const leases = new Leases(coord);
      // The no-op floor and what is compared with it, call by call; the durable writers apart.
      const ping: number[] = [];
      const acquires: number[] = [];
      const pairs: number[] = [];
      const client: number[] = [];
      const { inside, writes, unconfirmed, beforeAcquires, before } = await alternate(rounds, {
        calls: async () => {
          // Blocks of 32 acquires leave at most 32 of the bench pool's 64 slots held.
          const us = await timeInterleaved(n, 32, {
            ping: async () => void (await noop.ping()),
            acquire: () => acquireOp(coord),
            pair: async () => void (await pair(coord)),
            client: async () => void (await clientPair(leases)),
          });
          ping.push(us.ping);
          acquires.push(us.acquire);
          pairs.push(us.pair);
          client.push(us.client);
          return us.ping;
        },
        // One RPC that runs 20 × n pairs inside the object (its own round trip is lost in them).
        inside: async () => {
          const t0 = performance.now();
          await coord.pairsInside(20 * n);
          return ((performance.now() - t0) * 1000) / (20 * n);
        },
        unconfirmed: () => timeSequential(n, () => noop.writeUnconfirmed()),
        writes: () => timeSequential(n, () => noop.write()),
        beforeAcquires: async () =>
          (await timeInterleaved(Math.max(32, Math.floor(n / 2)), 32, { acquire: () => acquireOp(baseline) })).acquire,
        before: () => timeSequential(Math.max(10, Math.floor(n / 2)), () => pair(baseline)),
      });
      return Response.json({
        n,
        rounds,
        pingUs: median(ping),
        writeUs: median(writes),
        unconfirmedUs: median(unconfirmed),
        acquireUs: median(acquires),
        pairUs: median(pairs),
        clientUs: median(client),
        insideUs: median(inside),
        beforeAcquireUs: median(beforeAcquires),
        beforeUs: median(before),
        ping,
        writes,
        unconfirmed,
        acquires,
        pairs,
        client,
        inside,
        beforeAcquires,
        before,
      });
    }
    if (url.pathname === "/p2") {
      const n = int(url, "n", 2000);
      const c = int(url, "c", 32);
      const calls = { n: 0 };
      const shared = new Leases(counted(coord, calls));
      const settle = () => noop.ping();
      const { ping, writes, pairs, coalesced, before } = await alternate(rounds, {
        ping: () => timeConcurrent(n, c, () => noop.ping(), settle),
        pairs: () => timeConcurrent(n, c, () => pair(coord), settle),
        coalesced: () => timeConcurrent(n, c, () => clientPair(shared), settle),
        writes: () => timeConcurrent(n, c, () => noop.write(), settle),
        // The baseline is several times slower: a quarter of the calls keeps the run short.
        before: () => timeConcurrent(Math.max(c, Math.floor(n / 4)), c, () => pair(baseline), settle),
      });
      const held = (await coord.stats()).held;
      return Response.json({
        n,
        c,
        rounds,
        pingPerS: median(ping),
        writePerS: median(writes),
        pairsPerS: median(pairs),
        coalescedPerS: median(coalesced),
        beforePerS: median(before),
        coalescedCallsPerPair: calls.n / (n * rounds),
        ping,
        writes,
        pairs,
        coalesced,
        before,
        heldAfter: held,
      });
    }
    if (url.pathname === "/shed") {
      // Fill every slot and the queue (bench config: limit 64, queue 64), then time the refusals.
      const n = int(url, "n", 200);
      const leases = [];
      for (let i = 0; i < 64; i++) {
        const r = await coord.acquire({ holder: "filler" });
        if (r.ok) leases.push(r.lease);
      }
      const queued = Array.from({ length: 64 }, () => coord.acquire({ holder: "queued", waitMs: 30_000 }));
      while ((await coord.stats()).waiting < 64) await scheduler.wait(5);
      const pingUs = await timeSequential(n, () => noop.ping());
      const shedUs = await timeSequential(n, async () => {
        const r = await coord.acquire({ holder: "excess", waitMs: 2000 });
        if (r.ok || r.code !== "QUEUE_FULL" || !((r.retryAfterMs ?? 0) > 0))
          throw new Error(`expected QUEUE_FULL with a retry hint`);
      });
      for (const l of leases) await coord.release({ leaseId: l.id, fence: l.fence });
      for (const r of await Promise.all(queued))
        if (r.ok) await coord.release({ leaseId: r.lease.id, fence: r.lease.fence });
      return Response.json({ n, pingUs, shedUs });
    }
    if (url.pathname === "/restart-check") {
      const name = `restart-${run}`;
      const stub = env.COORDINATOR_DO.getByName(name);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => stub.acquire({ holder: `h${i}` })));
      const granted = results.filter((r) => r.ok).length;
      await stub.crash().catch(() => {});
      // Leases live in memory: the restarted object must grant nothing while they may be alive,
      // and re-register one whose holder renews.
      const again = env.COORDINATOR_DO.getByName(name);
      const s = await again.stats();
      const refused = await again.acquire({ holder: "newcomer", waitMs: 0 });
      const first = results.find((r) => r.ok);
      const renewed = first?.ok ? await again.renew(leaseRef(first.lease)) : null;
      return Response.json({
        granted,
        heldAfterRestart: s.held,
        recoveryMs: s.recovery?.endsInMs ?? 0,
        refusedInWindow: !refused.ok && refused.code === "ACQUIRE_TIMEOUT",
        recovered: renewed?.ok === true,
      });
    }
    if (url.pathname === "/block") {
      // workerd's clock stands still between I/O, so a pair served from the block has no time of
      // its own: the loop is timed as a whole, closed by one no-op RPC that moves the clock (its
      // round trip, measured just before, is taken off). What the block saves is counted too.
      const n = int(url, "n", 400);
      const c = int(url, "c", 32);
      const maxBlock = int(url, "block", 8);
      const background: Promise<unknown>[] = [];
      const callsPerPair = async (concurrency: number) => {
        const calls = { n: 0 };
        const stub = env.COORDINATOR_DO.getByName(`block-${concurrency}-${run}`);
        const leases = new ShardedLeases({
          coordinators: [counted(stub, calls)],
          isolate: createIsolateShards({ shards: 1, limit: 64, maxBlock, idleMs: 20 }),
          waitMs: 2000,
          waitUntil: (p) => void background.push(p),
        });
        const pingUs = await timeSequential(50, () => noop.ping());
        let left = n;
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (left-- > 0) await leases.release(await leases.acquire());
          }),
        );
        await noop.ping();
        const pairUs = Math.max(0, (performance.now() - t0) * 1000 - pingUs) / n;
        // Idle block leases go back after idleMs; wait for that, so their releases count too.
        while (background.length > 0) await Promise.all(background.splice(0));
        const held = (await stub.stats()).held;
        return { callsPerPair: calls.n / n, pairUs, pingUs, heldAfter: held };
      };
      return Response.json({ n, c, maxBlock, sequential: await callsPerPair(1), concurrent: await callsPerPair(c) });
    }
    return new Response("unknown bench\n", { status: 404 });
  },
} satisfies ExportedHandler<BenchEnv>;
