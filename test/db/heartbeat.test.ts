import { describe, expect, it } from "vitest";
import { heartbeat } from "../../src/client/heartbeat.ts";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { memoryCoordinator } from "./helpers.ts";

/**
 * The client's heartbeat on real timers, over the in-process coordinator (the same core; a
 * stand-in for the Durable Object, which the workerd suite exercises in test/workers/vanish.test.ts).
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function counted(leaseTtlMs = 300, claimMs?: number) {
  const coordinator = memoryCoordinator({ limit: 1, maxQueue: 5, waitMs: 2000, leaseTtlMs });
  const calls = { acquire: 0, release: 0, renew: 0 };
  const renewedWith: Array<number | undefined> = [];
  const { acquire, release, renew } = coordinator;
  coordinator.acquire = (o) => {
    calls.acquire++;
    return acquire(o);
  };
  coordinator.release = (r) => {
    calls.release++;
    return release(r);
  };
  coordinator.renew = (r, t) => {
    calls.renew++;
    renewedWith.push(t);
    return renew(r, t);
  };
  return { coordinator, calls, renewedWith, leases: new Leases(coordinator, { claimMs }) };
}

/** Holds the pool's one slot, starts `withLease` behind it, and frees the slot: `withLease` is granted from the queue. */
async function fromQueue<T>(
  { coordinator, leases }: ReturnType<typeof counted>,
  work: Parameters<Leases["withLease"]>[0],
  options: Parameters<Leases["withLease"]>[1] = {},
): Promise<T> {
  const first = await leases.acquire();
  const held = leases.withLease(work, options);
  await expect.poll(async () => (await coordinator.stats()).waiting).toBe(1);
  await leases.release(first);
  return (await held) as T;
}

describe("heartbeat", () => {
  it("work shorter than one beat makes no extra call: one acquire, one release", async () => {
    const { calls, leases } = counted();
    await leases.withLease(() => sleep(50));
    expect(calls).toEqual({ acquire: 1, release: 1, renew: 0 });
  });

  it("long work is renewed every third of the lifetime and never expires", async () => {
    const { coordinator, calls, leases } = counted();
    await leases.withLease(() => sleep(1000));
    expect(calls.renew).toBeGreaterThanOrEqual(8);
    expect((await coordinator.stats()).counters).toMatchObject({ expired: 0, released: 1 });
  });

  it("a coordinator blip shorter than the lease is ridden out: the next beat renews", async () => {
    const { coordinator, leases } = counted();
    const errors: unknown[] = [];
    const lease = await leases.acquire();
    const beat = heartbeat(leases, lease, { onError: (e) => errors.push(e) });
    await sleep(120);
    coordinator.down = true;
    await sleep(120);
    coordinator.down = false;
    await sleep(400);
    beat.stop();
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect((await coordinator.stats()).counters.expired).toBe(0);
    await leases.release(beat.lease);
  });

  it("a lease lost while the work runs aborts the scope's signal with the coordinator's code", async () => {
    const { coordinator, leases } = counted();
    let reason: unknown;
    await leases.withLease(async ({ signal }) => {
      coordinator.down = true;
      await sleep(400); // longer than the 300 ms lease: it lapses
      coordinator.down = false;
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      reason = signal.reason;
    });
    expect(isLeaseError(reason) && reason.code).toMatch(/LEASE_EXPIRED|LEASE_NOT_FOUND/);
  });

  describe("a grant from the queue (claim window 300 ms, TTL 1500 ms)", () => {
    it("work that ends within a third of the window makes no claim call: its release is all the coordinator hears", async () => {
      const c = counted(1500, 300);
      await fromQueue(c, () => sleep(20));
      expect(c.calls).toEqual({ acquire: 2, release: 2, renew: 0 });
      expect((await c.coordinator.stats()).counters).toMatchObject({ expired: 0, released: 2 });
    });

    it("longer work is claimed by its first beat, to the full TTL, and keeps its slot past the window", async () => {
      const c = counted(1500, 300);
      let after: number | undefined;
      await fromQueue(c, async ({ signal }) => {
        await sleep(700); // well past the 300 ms window
        after = (await c.coordinator.stats()).held;
        expect(signal.aborted).toBe(false);
      });
      expect(after).toBe(1);
      // The claim asks for the pool's TTL (undefined), not the window's 300 ms; then one beat a third of 1500 ms.
      expect(c.renewedWith[0]).toBeUndefined();
      expect(c.calls.renew).toBe(2);
      expect((await c.coordinator.stats()).counters).toMatchObject({ expired: 0, released: 2 });
    });

    it("with renewal off the claim still happens, and only it", async () => {
      const c = counted(1500, 300);
      await fromQueue(c, () => sleep(700), { heartbeatMs: 0 });
      expect(c.calls.renew).toBe(1);
      expect((await c.coordinator.stats()).counters).toMatchObject({ expired: 0, released: 2 });
    });

    it("a claim that cannot reach the coordinator in time loses the slot: the scope's signal aborts", async () => {
      const c = counted(1500, 300);
      let reason: unknown;
      await fromQueue(c, async ({ signal }) => {
        c.coordinator.down = true;
        await sleep(450); // every claim attempt inside the window fails; the grant lapses
        c.coordinator.down = false;
        await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
        reason = signal.reason;
      });
      expect(isLeaseError(reason) && reason.code).toMatch(/LEASE_EXPIRED|LEASE_NOT_FOUND/);
      expect((await c.coordinator.stats()).held).toBe(0);
    });

    it("`acquire` itself claims before it returns", async () => {
      const c = counted(1500, 300);
      const first = await c.leases.acquire();
      const second = c.leases.acquire();
      await expect.poll(async () => (await c.coordinator.stats()).waiting).toBe(1);
      await c.leases.release(first);
      const lease = await second;
      expect(c.calls.renew).toBe(1);
      expect(lease.expiresAt - Date.now()).toBeGreaterThan(1000);
      await c.leases.release(lease);
    });
  });

  it("heartbeatMs 0 never renews; a bad value is refused", async () => {
    const { calls, leases } = counted();
    const lease = await leases.acquire();
    const beat = heartbeat(leases, lease, { heartbeatMs: 0 });
    await sleep(200);
    beat.stop();
    expect(calls.renew).toBe(0);
    expect(() => heartbeat(leases, lease, { heartbeatMs: -1 })).toThrow(/heartbeatMs/);
  });
});
