import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULT_CLAIM_MS, Leases } from "../../src/client/leases.ts";
import { holdLease } from "../../src/client/hold.ts";
import { ShardedLeases, createIsolateShards, shardName } from "../../src/client/sharded-leases.ts";
import { DEFAULT_CONFIG, type LeaseGrant } from "../../src/core/index.ts";

/**
 * Callers that vanish as production cancels them, against the real Durable Object in workerd.
 *
 * Production cancels a Worker request whose client disconnected: its pending I/O never resolves,
 * its timers never fire, no `finally` runs. Local workerd does not cancel a request when its
 * client disconnects (checked: DESIGN.md, 2026-12), so these tests end the caller's execution
 * context another way the runtime really does it: the caller's code runs inside another Durable
 * Object (an unused coordinator object, only a host here) and that object is torn down with
 * `ctx.abort()`. Its pending acquire, its heartbeat timer and its `finally` die with it — the
 * coordinator object, as in production, keeps running.
 *
 * Limit 3 and max queue 5 come from vitest.workers.config.ts; the victims' lease TTL is the
 * default (1500 ms) with the default heartbeat (a third of it).
 */
const TTL_MS = DEFAULT_CONFIG.leaseTtlMs;
const LIMIT = 3;
let seq = 0;
const figures: string[] = [];
afterAll(() => console.log(`[reliability] vanish (workerd): ${figures.join("; ")}`));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fresh() {
  const name = `vanish-${++seq}`;
  return { name, pool: env.COORDINATOR_DO.getByName(name), host: env.COORDINATOR_DO.getByName(`${name}-host`) };
}
type Fresh = ReturnType<typeof fresh>;

type Client = "Leases" | "ShardedLeases";

/** Starts `n` calls of `withLease` inside the host object; they live exactly as long as it does. */
async function inHost(
  f: Fresh,
  n: number,
  options: { waitMs?: number; ttlMs?: number; heartbeatMs?: number },
  client: Client = "Leases",
): Promise<void> {
  await runInDurableObject(f.host, async () => {
    const stub = env.COORDINATOR_DO.getByName(f.name);
    const leases =
      client === "Leases"
        ? new Leases(stub, { holder: "victim" })
        : // One shard: the object is `f.name` itself, and the sharded client's claim window applies.
          new ShardedLeases({
            coordinators: [stub],
            isolate: createIsolateShards({ shards: 1, limit: LIMIT }),
            waitMs: 10_000,
            holder: "victim",
          });
    for (let i = 0; i < n; i++) {
      void holdIn(leases, options).catch(() => {});
    }
  });
}

/** A holder of the slot for two minutes: `withLease` of the plain client, acquire + heartbeat of the sharded one. */
async function holdIn(
  leases: Leases | ShardedLeases,
  options: { waitMs?: number; ttlMs?: number; heartbeatMs?: number },
): Promise<unknown> {
  if (leases instanceof Leases) return leases.withLease(() => sleep(120_000), { ttlMs: TTL_MS, ...options });
  return holdLease(leases, () => sleep(120_000), { ttlMs: TTL_MS, ...options });
}

/** The host's context ends: nothing it started runs again. */
async function vanish(f: Fresh): Promise<number> {
  const at = Date.now();
  await runInDurableObject(f.host, (_, state) => state.abort("client disconnected")).catch(() => {});
  return at;
}

/** Samples `held` until stopped; it must never exceed the limit. */
function watch(f: Fresh) {
  let on = true;
  let max = 0;
  const done = (async () => {
    while (on) {
      max = Math.max(max, (await f.pool.stats()).held);
      await sleep(10);
    }
  })();
  return async () => {
    on = false;
    await done;
    return max;
  };
}

async function grantNow(f: Fresh, holder: string): Promise<LeaseGrant> {
  const r = await f.pool.acquire({ holder, ttlMs: 30_000 });
  if (!r.ok) throw new Error(`setup: ${r.code}`);
  return r.lease;
}

describe("callers that vanish (their context torn down), Durable Object in workerd", () => {
  it("holders cancelled mid-work: their slots go to the queued survivors within one lease TTL, never above the limit", async () => {
    const f = fresh();
    await inHost(f, 2, {});
    await expect.poll(async () => (await f.pool.stats()).held).toBe(2);
    await grantNow(f, "survivor");
    const survivors = [0, 1].map(() => f.pool.acquire({ holder: "survivor-waiting", waitMs: 10_000 }));
    await expect.poll(async () => (await f.pool.stats()).waiting).toBe(2);
    // Alive, they outlast their TTL: the heartbeat renews them.
    await sleep(TTL_MS + 500);
    expect(await f.pool.stats()).toMatchObject({ held: LIMIT, waiting: 2, counters: { expired: 0 } });
    const stop = watch(f);
    const killedAt = await vanish(f);
    const answers = await Promise.all(survivors);
    const backMs = Date.now() - killedAt;
    const max = await stop();
    expect(answers.every((a) => a.ok)).toBe(true);
    expect(backMs).toBeLessThanOrEqual(TTL_MS + 250);
    expect(max).toBeLessThanOrEqual(LIMIT);
    expect((await f.pool.stats()).counters).toMatchObject({ expired: 2, released: 0 });
    figures.push(
      `2 holders cancelled mid-work: both queued survivors granted ${backMs} ms after the cancel (TTL ${TTL_MS} ms), max held ${max}/${LIMIT}`,
    );
  });

  it.each<Client>(["Leases", "ShardedLeases"])(
    "waiters cancelled mid-wait (%s): the slots they are granted after they are gone come back at the claim window",
    async (client) => {
      const f = fresh();
      const held = [await grantNow(f, "s0"), await grantNow(f, "s1"), await grantNow(f, "s2")];
      await inHost(f, 2, { waitMs: 10_000 }, client);
      await expect.poll(async () => (await f.pool.stats()).waiting).toBe(2);
      const survivors = [0, 1].map(() => f.pool.acquire({ holder: "survivor-waiting", waitMs: 10_000 }));
      await expect.poll(async () => (await f.pool.stats()).waiting).toBe(4);
      await vanish(f);
      const stop = watch(f);
      // Two slots free: FIFO grants them to the vanished waiters, whose answers go nowhere.
      const freedAt = Date.now();
      for (const l of held.slice(0, 2)) await f.pool.release({ leaseId: l.id, fence: l.fence });
      expect((await f.pool.stats()).leases.filter((l) => l.holder === "victim")).toHaveLength(2);
      const answers = await Promise.all(survivors);
      const backMs = Date.now() - freedAt;
      const max = await stop();
      expect(answers.every((a) => a.ok)).toBe(true);
      // Never claimed: back at the claim window, not at the lease TTL.
      expect(backMs).toBeLessThanOrEqual(DEFAULT_CLAIM_MS + 250);
      expect(max).toBeLessThanOrEqual(LIMIT);
      expect((await f.pool.stats()).counters).toMatchObject({ expired: 2 });
      figures.push(
        `2 waiters cancelled mid-wait (${client}), granted after they were gone: slots back to the survivors ${backMs} ms after the grant (claim window ${DEFAULT_CLAIM_MS} ms)`,
      );
    },
  );

  it("holders and waiters cancelled together: every slot is back within one lease TTL plus one claim window", async () => {
    const f = fresh();
    await inHost(f, 2, {});
    await expect.poll(async () => (await f.pool.stats()).held).toBe(2);
    await grantNow(f, "survivor");
    await inHost(f, 2, { waitMs: 10_000 });
    await expect.poll(async () => (await f.pool.stats()).waiting).toBe(2);
    const survivors = [0, 1].map(() => f.pool.acquire({ holder: "survivor-waiting", waitMs: 10_000 }));
    await expect.poll(async () => (await f.pool.stats()).waiting).toBe(4);
    const stop = watch(f);
    const killedAt = await vanish(f);
    const answers = await Promise.all(survivors);
    const backMs = Date.now() - killedAt;
    const max = await stop();
    expect(answers.every((a) => a.ok)).toBe(true);
    // The holders' leases lapse within a TTL of their last beat; FIFO hands those slots to the
    // vanished waiters first (the object cannot tell they are gone), which never claim them.
    expect(backMs).toBeLessThanOrEqual(TTL_MS + DEFAULT_CLAIM_MS + 250);
    expect(max).toBeLessThanOrEqual(LIMIT);
    expect((await f.pool.stats()).counters).toMatchObject({ expired: 4, released: 0 });
    figures.push(
      `2 holders + 2 waiters cancelled together: both survivors granted ${backMs} ms after the cancel (TTL ${TTL_MS} + claim ${DEFAULT_CLAIM_MS} ms), max held ${max}/${LIMIT}`,
    );
  });

  it("before: with no heartbeat and a 30 s TTL a cancelled holder keeps its slot, and the survivors behind it time out", async () => {
    const f = fresh();
    await inHost(f, 2, { ttlMs: 30_000, heartbeatMs: 0 });
    await expect.poll(async () => (await f.pool.stats()).held).toBe(2);
    await grantNow(f, "survivor");
    const survivors = [0, 1].map(() => f.pool.acquire({ holder: "survivor-waiting", waitMs: 2500 }));
    await expect.poll(async () => (await f.pool.stats()).waiting).toBe(2);
    const killedAt = await vanish(f);
    const answers = await Promise.all(survivors);
    expect(answers.map((a) => (a.ok ? "granted" : a.code))).toEqual(["ACQUIRE_TIMEOUT", "ACQUIRE_TIMEOUT"]);
    const s = await f.pool.stats();
    expect(s).toMatchObject({ held: LIMIT, counters: { expired: 0, released: 0 } });
    figures.push(
      `before (no heartbeat, 30 s TTL): 2 cancelled holders' slots still held ${Date.now() - killedAt} ms after the cancel, expiring in ${Math.min(...s.leases.map((l) => l.expiresInMs))} ms; survivors timed out`,
    );
  });
});

describe("the sharded client gives up a wait like the plain one (LEASE_SHARDS=2, Durable Objects in workerd)", () => {
  it("an aborted signal rejects the wait at once, and the slot granted afterwards goes straight back", async () => {
    const name = `vanish-sharded-${++seq}`;
    const stubs = () => [0, 1].map((i) => env.COORDINATOR_DO.getByName(shardName(name, i, 2)));
    const pending: Array<Promise<unknown>> = [];
    const leases = new ShardedLeases({
      coordinators: stubs(),
      isolate: createIsolateShards({ shards: 2, limit: LIMIT }),
      waitMs: 10_000,
      waitUntil: (p) => void pending.push(p),
    });
    const heldBefore = async () => (await Promise.all(stubs().map((s) => s.stats()))).reduce((a, s) => a + s.held, 0);
    // The pool's root shares the limit between the two shards; every slot held.
    await env.COORDINATOR_DO.getByName(name).setLayout({ count: 2, split: "demand" });
    const held = [
      await leases.acquire({ waitMs: 5000, ttlMs: 30_000 }),
      await leases.acquire({ waitMs: 5000, ttlMs: 30_000 }),
      await leases.acquire({ waitMs: 5000, ttlMs: 30_000 }),
    ];
    expect(await heldBefore()).toBe(LIMIT);
    const gaveUp = new AbortController();
    const waiting = leases.acquire({ holder: "gives-up", waitMs: 10_000, signal: gaveUp.signal });
    await expect
      .poll(async () => (await Promise.all(stubs().map((s) => s.stats()))).reduce((a, s) => a + s.waiting, 0))
      .toBe(1);
    const abortedAt = Date.now();
    gaveUp.abort(new Error("client went away"));
    await expect(waiting).rejects.toThrow("client went away");
    expect(Date.now() - abortedAt).toBeLessThan(100);
    // Free the slot of the shard it waits on: the object grants it to the waiter that gave up;
    // the client releases it as it arrives, well before the claim window or the TTL.
    const shardOfWaiter = (await Promise.all(stubs().map((s) => s.stats()))).findIndex((s) => s.waiting === 1);
    const freed = held.find((l) => l.shard === shardOfWaiter)!;
    const freedAt = Date.now();
    await leases.release(freed);
    await expect.poll(heldBefore, { timeout: 1000, interval: 10 }).toBe(LIMIT - 1);
    expect(Date.now() - freedAt).toBeLessThan(DEFAULT_CLAIM_MS);
    await Promise.all(pending);
    const shard = await stubs()[shardOfWaiter]!.stats();
    expect(shard.counters).toMatchObject({ released: 2, expired: 0 });
    for (const l of held.filter((l) => l !== freed)) await leases.release(l);
    expect(await heldBefore()).toBe(0);
  });
});
