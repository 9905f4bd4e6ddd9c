/**
 * Coordinator micro-benchmarks that run inside workerd: the Worker loops RPCs to the production
 * `ConnectionCoordinator` and to `NoopObject` (the physical floor: an RPC that does nothing) and
 * times them with `performance.now()` (workerd advances the clock after I/O, and every RPC is I/O).
 * The two are measured in alternating rounds, so machine noise hits both alike.
 *
 * GET /p1?n=N           sequential: no-op RPC vs acquire+release, per call in µs
 * GET /p2?n=N&c=C       C concurrent loops sharing N calls: no-op RPCs/s vs acquire+release pairs/s
 * GET /shed?n=N         a full pool and queue: how long a QUEUE_FULL answer takes, in µs
 * GET /restart-check    grants leases concurrently, restarts the object, counts those still held
 */
import { DurableObject } from "cloudflare:workers";
import { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
import { WritePerCallCoordinator } from "./baseline/write-per-call-coordinator.ts";

export { WritePerCallCoordinator };

/**
 * The production coordinator plus one bench-only method to crash it (as a deploy or an eviction
 * would), so the bench can check that coalesced writes were durable. Not in the production API.
 */
export class BenchCoordinator extends ConnectionCoordinator {
  /** @example await stub.crash().catch(() => {}) */
  async crash(): Promise<void> {
    this.ctx.abort("bench restart");
  }
}

/** The floor: a Durable Object whose only RPC does nothing. Bench-only; not in the production API. */
export class NoopObject extends DurableObject {
  /** @example await env.NOOP_DO.getByName("x").ping() */
  async ping(): Promise<{ ok: true }> {
    return { ok: true };
  }
}

interface BenchEnv {
  COORDINATOR_DO: DurableObjectNamespace<BenchCoordinator>;
  NOOP_DO: DurableObjectNamespace<NoopObject>;
  BASELINE_DO: DurableObjectNamespace<WritePerCallCoordinator>;
}

type Coordinator = DurableObjectStub<BenchCoordinator> | DurableObjectStub<WritePerCallCoordinator>;

async function pair(stub: Coordinator): Promise<void> {
  const r = await stub.acquire({ holder: "bench", waitMs: 2000 });
  if (!r.ok) throw new Error(`acquire failed: ${r.code}`);
  const rel = await stub.release({ leaseId: r.lease.id, fence: r.lease.fence });
  if (!rel.ok) throw new Error(`release failed: ${rel.code}`);
}

async function timeSequential(n: number, fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn();
  return ((performance.now() - t0) * 1000) / n;
}

/** Operations per second from `c` loops sharing `n` calls of `fn` (a count, not a time window:
 * workerd's clock only moves with I/O, so a time-bounded loop stops late or early). */
async function timeConcurrent(n: number, c: number, fn: () => Promise<unknown>): Promise<number> {
  let left = n;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (left-- > 0) await fn();
    }),
  );
  return n / ((performance.now() - t0) / 1000);
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
    const baseline = env.BASELINE_DO.getByName(`baseline-${url.pathname}-${run}`);
    await pair(coord); // warm the objects up before timing
    await pair(baseline);
    if (url.pathname === "/p1") {
      const n = int(url, "n", 500);
      const ping: number[] = [];
      const pairs: number[] = [];
      const before: number[] = [];
      for (let r = 0; r < rounds; r++) {
        ping.push(await timeSequential(n, () => noop.ping()));
        pairs.push(await timeSequential(n, () => pair(coord)));
        before.push(await timeSequential(Math.max(10, Math.floor(n / 4)), () => pair(baseline)));
      }
      return Response.json({ n, rounds, pingUs: median(ping), pairUs: median(pairs), beforeUs: median(before), ping, pairs, before });
    }
    if (url.pathname === "/p2") {
      const n = int(url, "n", 2000);
      const c = int(url, "c", 32);
      const ping: number[] = [];
      const pairs: number[] = [];
      const before: number[] = [];
      for (let r = 0; r < rounds; r++) {
        ping.push(await timeConcurrent(n, c, () => noop.ping()));
        pairs.push(await timeConcurrent(n, c, () => pair(coord)));
        // The baseline is an order of magnitude slower: a tenth of the calls keeps the run short.
        before.push(await timeConcurrent(Math.max(c, Math.floor(n / 10)), c, () => pair(baseline)));
      }
      const held = (await coord.stats()).held;
      return Response.json({ n, c, rounds, pingPerS: median(ping), pairsPerS: median(pairs), beforePerS: median(before), ping, pairs, before, heldAfter: held });
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
        if (r.ok || r.code !== "QUEUE_FULL" || !((r.retryAfterMs ?? 0) > 0)) throw new Error(`expected QUEUE_FULL with a retry hint`);
      });
      for (const l of leases) await coord.release({ leaseId: l.id, fence: l.fence });
      for (const r of await Promise.all(queued)) if (r.ok) await coord.release({ leaseId: r.lease.id, fence: r.lease.fence });
      return Response.json({ n, pingUs, shedUs });
    }
    if (url.pathname === "/restart-check") {
      const name = `restart-${run}`;
      const stub = env.COORDINATOR_DO.getByName(name);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => stub.acquire({ holder: `h${i}` })));
      const granted = results.filter((r) => r.ok).length;
      await stub.crash().catch(() => {});
      const heldAfterRestart = (await env.COORDINATOR_DO.getByName(name).stats()).held;
      return Response.json({ granted, heldAfterRestart });
    }
    return new Response("unknown bench\n", { status: 404 });
  },
} satisfies ExportedHandler<BenchEnv>;
