/**
 * A Worker process of `npm run bench:topology`: serves one leased query per request, its
 * coordinator bound by script name from another workerd process (the coordinator's own Worker).
 *
 * The mode is per request (`?mode=`, and the pool `?pool=`, default `main`), so one set of processes serves every setup side by side:
 * - `off`: no coordinator (`COORDINATOR=off`): the query alone.
 * - `lease`: one lease per request from the coordinator (no block).
 * - `block`: the isolate's lease block (`LEASE_BLOCK`), handing finished leases back while
 *   callers wait at the coordinator (the default).
 * - `block-keep`: the block as it was before: finished leases stay in the isolate while young,
 *   whoever waits at the coordinator.
 * - `shard`: one lease per request from the shard object `${pool}#${home}` (`?home=`), whose
 *   share of the pool's limit its root (the object `${pool}`) gives it: a process that reaches
 *   one shard, as a region's Workers reach the shard placed near them.
 *
 * Each answer carries how long the request waited for its lease (`x-lease-wait-ms`, the isolate's
 * clock) and how long its query took (`x-query-ms`); `/ping` times a no-op call to the coordinator's process, and an acquire on an idle pool; `/calls` counts the calls
 * this process made to the coordinator for its requests; `/held` reads the coordinator's held leases.
 */
import { Leases } from "../src/client/leases.ts";
import { ReleaseOutbox } from "../src/client/outbox.ts";
import type { Coordinator, LeaseClient } from "../src/client/leases.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards } from "../src/client/sharded-leases.ts";
import { closeConnection, connectFromWorker } from "../src/db/hyperdrive.ts";
import type { ConnectionCoordinator } from "../src/workers.ts";

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  NOOP_DO: DurableObjectNamespace<{ ping(): number } & Rpc.DurableObjectBranded>;
  HYPERDRIVE: Hyperdrive;
  LEASE_LIMIT: string;
  LEASE_BLOCK: string;
  LEASE_WAIT_MS: string;
  QUERY: string;
}

const APP = "leasegate-topology";
let calls = 0;
let requests = 0;
const releaseFailures: Record<string, number> = {};
/** After each leased response: [ms to close the connection, ms for the release], cleared by `/calls`. */
let afterResponse: Array<[number, number]> = [];
const blocks = new Map<string, IsolateShards>();

/** The coordinator stub with every call counted; `object`: its name, sent with each acquire (a shard checks it against its id). */
function counted(stub: DurableObjectStub<ConnectionCoordinator>, object?: string): Coordinator {
  const c = stub as unknown as Coordinator;
  const count = <T>(call: () => Promise<T>): Promise<T> => {
    calls++;
    return call();
  };
  return {
    acquire: (o) => count(() => c.acquire(object === undefined ? o : { ...o, object })),
    release: (r) => count(() => c.release(r)),
    renew: (r, t) => count(() => c.renew(r, t)),
    stats: () => count(() => c.stats()),
    acquireMany: (r) => count(() => c.acquireMany!(r)),
    releaseMany: (r) => count(() => c.releaseMany!(r)),
  };
}

/** The isolate's release outbox per pool (workerPool keeps one the same way). */
const outboxes = new Map<string, ReleaseOutbox>();
function outboxFor(pool: string): ReleaseOutbox {
  let outbox = outboxes.get(pool);
  if (!outbox) {
    outbox = new ReleaseOutbox();
    outboxes.set(pool, outbox);
  }
  return outbox;
}

function leasesFor(mode: string, pool: string, env: Env, ctx: ExecutionContext, home: string | null): LeaseClient {
  if (mode === "shard") {
    const shard = `${pool}#${Number(home ?? 0)}`;
    return new Leases(counted(env.COORDINATOR_DO.getByName(shard), shard), {
      outbox: outboxFor(shard),
      waitUntil: (p) => ctx.waitUntil(p),
    });
  }
  const stub = counted(env.COORDINATOR_DO.getByName(pool));
  // One lease per request, as workerPool makes it: releases ride on the isolate's next acquire.
  if (mode === "lease") return new Leases(stub, { outbox: outboxFor(pool), waitUntil: (p) => ctx.waitUntil(p) });
  let isolate = blocks.get(`${mode}|${pool}`);
  if (!isolate) {
    const limit = Number(env.LEASE_LIMIT);
    isolate = createIsolateShards({
      shards: 1,
      limit,
      maxBlock: Number(env.LEASE_BLOCK),
      yieldToQueue: mode === "block",
    });
    blocks.set(`${mode}|${pool}`, isolate);
  }
  return new ShardedLeases({
    coordinators: [stub],
    isolate,
    waitMs: Number(env.LEASE_WAIT_MS),
    waitUntil: (p) => ctx.waitUntil(p),
  });
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/ping") {
      const stub = env.NOOP_DO.getByName("noop");
      await stub.ping();
      const times: number[] = [];
      for (let i = 0; i < Number(url.searchParams.get("n") ?? 20); i++) {
        const t0 = performance.now();
        await stub.ping();
        times.push(performance.now() - t0);
      }
      // An acquire on an idle pool over the same path: the no-op's round trip plus the grant's cost.
      const coordinator = env.COORDINATOR_DO.getByName("probe");
      const acquireTimes: number[] = [];
      for (let i = 0; i < times.length; i++) {
        const t0 = performance.now();
        const result = await coordinator.acquire({ holder: "probe" });
        acquireTimes.push(performance.now() - t0);
        if (result.ok) await coordinator.release({ leaseId: result.lease.id, fence: result.lease.fence });
      }
      return Response.json({ times, acquireTimes });
    }
    if (url.pathname === "/calls") {
      const body = { calls, requests, releaseFailures, afterResponse };
      afterResponse = [];
      return Response.json(body);
    }
    // Leases held at the coordinator now (not counted as the requests' calls).
    const pool = url.searchParams.get("pool") ?? "main";
    if (url.pathname === "/held")
      return Response.json({ held: (await env.COORDINATOR_DO.getByName(pool).stats()).held });
    // A sharded pool: held across the root and its shards, and the root's shares.
    if (url.pathname === "/shares") {
      const n = Number(url.searchParams.get("shards") ?? 0);
      const names = [pool, ...Array.from({ length: n }, (_, i) => `${pool}#${i}`)];
      const all = await Promise.all(names.map((name) => env.COORDINATOR_DO.getByName(name).stats()));
      return Response.json({ held: all.reduce((a, s) => a + s.held, 0), shares: all[0]!.shares ?? null });
    }
    // A sharded pool's layout (the operator control on its root).
    if (url.pathname === "/layout") {
      const count = Number(url.searchParams.get("count"));
      const split = url.searchParams.get("split") === "even" ? "even" : "demand";
      return Response.json(await env.COORDINATOR_DO.getByName(pool).setLayout({ count, split }, pool));
    }
    // A pool's own limit (the operator control), for a check on fewer slots than LEASE_LIMIT.
    if (url.pathname === "/limit")
      return Response.json(await env.COORDINATOR_DO.getByName(pool).setLimit(Number(url.searchParams.get("n"))));
    const mode = url.searchParams.get("mode") ?? "lease";
    requests++;
    const t0 = Date.now();
    const leases = mode === "off" ? undefined : leasesFor(mode, pool, env, ctx, url.searchParams.get("home"));
    let lease: Awaited<ReturnType<LeaseClient["acquire"]>> | undefined;
    try {
      lease = await leases?.acquire({ waitMs: Number(env.LEASE_WAIT_MS) });
    } catch (error) {
      const code = (error as { code?: string }).code ?? "INTERNAL";
      return Response.json({ error: code }, { status: 503 });
    }
    const waited = Date.now() - t0;
    const sql = connectFromWorker(env.HYPERDRIVE.connectionString, APP);
    try {
      const rows = await sql.unsafe(env.QUERY);
      const headers = { "x-lease-wait-ms": String(waited), "x-query-ms": String(Date.now() - t0 - waited) };
      return Response.json({ n: rows.length }, { headers });
    } catch (error) {
      return Response.json({ error: String(error) }, { status: 500 });
    } finally {
      // As the library's pool does: the slot goes back once the connection is closed.
      const closed = closeConnection(sql);
      const t1 = Date.now();
      const released =
        lease && leases
          ? closed.then(async () => {
              const t2 = Date.now();
              // As the library's lifecycle does: a release with an outbox may ride on the next acquire.
              await (leases instanceof Leases ? leases.giveBack(lease) : leases.release(lease));
              afterResponse.push([t2 - t1, Date.now() - t2]);
            })
          : closed;
      ctx.waitUntil(
        released.catch((error: { code?: string }) => {
          const code = error.code ?? "INTERNAL";
          releaseFailures[code] = (releaseFailures[code] ?? 0) + 1;
        }),
      );
    }
  },
} satisfies ExportedHandler<Env>;
