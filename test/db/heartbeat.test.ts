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

function counted() {
  const coordinator = memoryCoordinator({ limit: 1, maxQueue: 5, waitMs: 2000, leaseTtlMs: 300 });
  const calls = { acquire: 0, release: 0, renew: 0 };
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
    return renew(r, t);
  };
  return { coordinator, calls, leases: new Leases(coordinator) };
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
