import { env } from "cloudflare:workers";
import { afterAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { type LeaseGrant, isLeaseError, leaseRef } from "../../src/core/index.ts";
import { restartCoordinator } from "../support/coordinator.ts";

/**
 * Injected faults against the real Durable Object in workerd (limit 3, max queue 5 from
 * vitest.workers.config.ts): holders that die, callers that walk away, the object restarting under
 * held leases and queued waiters. The figures logged here are quoted in the README.
 */
let poolSeq = 0;
const fresh = () => {
  const name = `faults-${++poolSeq}`;
  return { name, stub: env.COORDINATOR_DO.getByName(name) };
};
type Stub = ReturnType<typeof fresh>["stub"];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const figures: string[] = [];
afterAll(() => console.log(`[reliability] faults: ${figures.join("; ")}`));

async function hold(stub: Stub, n: number, ttlMs = 30_000): Promise<LeaseGrant[]> {
  const out: LeaseGrant[] = [];
  for (let i = 0; i < n; i++) {
    const r = await stub.acquire({ holder: `holder-${i}`, ttlMs });
    if (!r.ok) throw new Error(`setup: ${r.code}`);
    out.push(r.lease);
  }
  return out;
}

describe("faults in workerd", () => {
  it("a holder that dies without releasing: its slot goes to the next waiter at its TTL, not before", async () => {
    const { stub } = fresh();
    const ttlMs = 300;
    const [dead] = await hold(stub, 1, ttlMs);
    await hold(stub, 2);
    const r = await stub.acquire({ holder: "next", waitMs: 3000 });
    const grantedAt = Date.now();
    expect(r.ok).toBe(true);
    const late = grantedAt - dead!.expiresAt;
    // Never before the expiry (the holder might still be working), and promptly after it.
    expect(late).toBeGreaterThanOrEqual(0);
    expect(late).toBeLessThan(200);
    expect((await stub.stats()).counters.expired).toBe(1);
    figures.push(`dead holder's slot back ${late} ms after its ${ttlMs} ms TTL`);
  });

  it("a caller that abandons its queued acquire loses no slot beyond the TTL", async () => {
    const { stub } = fresh();
    const held = await hold(stub, 3);
    // The caller goes away while queued: nobody will ever read this answer or release its lease.
    void stub.acquire({ holder: "abandoned", waitMs: 5000, ttlMs: 250 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    await stub.release({ leaseId: held[0]!.id, fence: held[0]!.fence });
    // The abandoned waiter was granted the freed slot; the next caller gets it back at that TTL.
    const s = await stub.stats();
    expect(s).toMatchObject({ held: 3, waiting: 0 });
    const abandonedExpiresAt = Date.now() + s.leases.find((l) => l.holder === "abandoned")!.expiresInMs;
    const next = await stub.acquire({ holder: "next", waitMs: 2000 });
    expect(next.ok).toBe(true);
    const late = Date.now() - abandonedExpiresAt;
    expect(late).toBeLessThan(200);
    expect((await stub.stats()).counters).toMatchObject({ expired: 1, granted: 5 });
    figures.push(`abandoned waiter's slot back ${Math.max(0, late)} ms after its 250 ms TTL`);
  });

  it("a caller that abandons while queued and is never granted holds nothing: it times out at its deadline", async () => {
    const { stub } = fresh();
    await hold(stub, 3);
    void stub.acquire({ holder: "abandoned", waitMs: 200 });
    await expect.poll(async () => (await stub.stats()).waiting).toBe(1);
    await expect.poll(async () => (await stub.stats()).waiting, { timeout: 1000 }).toBe(0);
    expect(await stub.stats()).toMatchObject({ held: 3, counters: { timedOut: 1, granted: 3 } });
  });

  it("the object restarts with leases held and waiters queued: the limit holds, waiters get a retryable error, retries succeed", async () => {
    let { name, stub } = fresh();
    // Leases long enough to be recovered after the restart: more than the clock margin left.
    const held = await hold(stub, 3, 1500);
    const clients = Array.from(
      { length: 5 },
      (_, i) => new Leases(env.COORDINATOR_DO.getByName(name), { holder: `client-${i}` }),
    );
    const first = clients.map((c) =>
      c.acquire({ waitMs: 5000 }).then(
        () => "granted",
        (e: unknown) => (isLeaseError(e) ? `${e.code}${e.retryable ? " (retryable)" : ""}` : String(e)),
      ),
    );
    await expect.poll(async () => (await stub.stats()).waiting).toBe(5);
    stub = await restartCoordinator(name);
    expect(await Promise.all(first)).toEqual(Array(5).fill("COORDINATOR_UNAVAILABLE (retryable)"));
    // The restarted object forgot the three live leases, so it grants nothing until they are
    // recovered or expired: no fourth caller gets in. Their holders' heartbeats re-register them.
    expect(await stub.stats()).toMatchObject({ held: 0, waiting: 0, recovery: { recovered: 0 } });
    expect(await stub.acquire({ holder: "intruder", waitMs: 0 })).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
    for (const l of held) expect(await stub.renew(leaseRef(l), 30_000)).toMatchObject({ ok: true });
    expect(await stub.stats()).toMatchObject({ held: 3, recovery: { recovered: 3 } });

    // Every client retries (as the error says it may) while a sampler watches the limit.
    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, (await stub.stats()).held);
        await sleep(2);
      }
    })();
    const fences: number[] = [];
    const retries = clients.map(async (_, i) => {
      for (let attempt = 0; attempt < 20; attempt++) {
        // A stub whose object was reset stays broken: each retry takes a fresh one, as a new request would.
        const c = new Leases(env.COORDINATOR_DO.getByName(name), { holder: `client-${i}` });
        try {
          const lease = await c.acquire({ waitMs: 3000 });
          fences.push(lease.fence);
          await sleep(20);
          await c.release(lease);
          return "done";
        } catch (e) {
          if (!isLeaseError(e) || !e.retryable) throw e;
          await sleep(e.retryAfterMs ?? 50);
        }
      }
      return "gave up";
    });
    for (const l of held) {
      await sleep(30);
      await stub.release({ leaseId: l.id, fence: l.fence });
    }
    expect(await Promise.all(retries)).toEqual(Array(5).fill("done"));
    sampling = false;
    await sampler;
    expect(peak).toBeLessThanOrEqual(3);
    // Fences are never reused across the restart.
    expect(new Set(fences).size).toBe(5);
    expect(Math.min(...fences)).toBeGreaterThan(Math.max(...held.map((l) => l.fence)));
    expect(await stub.stats()).toMatchObject({ held: 0, waiting: 0 });
    figures.push(
      "restart under 3 held + 5 queued: 5/5 waiters got COORDINATOR_UNAVAILABLE and succeeded on retry once the 3 recovered leases were released, peak held 3",
    );
  });
});
