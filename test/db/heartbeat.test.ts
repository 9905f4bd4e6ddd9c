import { describe, expect, it } from "vitest";
import { heartbeat } from "../../src/client/heartbeat.ts";
import { Leases } from "../../src/client/leases.ts";
import { CLAIM_WINDOW } from "../../src/client/round-trips.ts";
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

  it("a holder that cannot renew stops by its own clock, before the coordinator's expiry, with LEASE_LOST", async () => {
    const { coordinator, leases } = counted();
    let reason: unknown;
    let abortedAt = 0;
    let expiresAt = 0;
    await leases.withLease(async ({ signal, lease }) => {
      expiresAt = lease.expiresAt;
      coordinator.down = true;
      signal.addEventListener("abort", () => (abortedAt = Date.now()), { once: true });
      await sleep(400); // longer than the 300 ms lease: it lapses
      coordinator.down = false;
      reason = signal.reason;
    });
    expect(isLeaseError(reason) && reason.code).toBe("LEASE_LOST");
    expect(isLeaseError(reason) && reason.executed).toBe("maybe");
    // Stopped before the coordinator could count the slot free: the margin (a fifth of 300 ms) left.
    expect(abortedAt).toBeGreaterThan(0);
    expect(abortedAt).toBeLessThanOrEqual(expiresAt - 40);
  });

  it("a lost lease's caller is answered once its connection is closed, not after a release that cannot arrive", async () => {
    const { coordinator, leases } = counted();
    let closedAt = 0;
    // Cut off: every call hangs, as across a partition (nothing refuses, nothing answers).
    const hang = () => new Promise<never>(() => {});
    const call = leases.withLease(async ({ signal, beforeRelease }) => {
      beforeRelease(async () => {
        await sleep(20);
        closedAt = Date.now();
      });
      coordinator.renew = hang;
      coordinator.release = hang;
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      throw signal.reason;
    });
    await expect(call).rejects.toMatchObject({ code: "LEASE_LOST" });
    const answeredAt = Date.now();
    expect(closedAt).toBeGreaterThan(0);
    expect(answeredAt - closedAt).toBeLessThan(50);
  });

  it("a refused renewal (an operator's revoke) aborts the scope's signal with LEASE_LOST, its cause the refusal", async () => {
    const { coordinator, leases } = counted(600);
    let reason: unknown;
    await leases.withLease(async ({ signal, lease }) => {
      await coordinator.release({ leaseId: lease.id, fence: lease.fence }); // the slot is gone behind the holder's back
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      reason = signal.reason;
    });
    expect(isLeaseError(reason) && reason.code).toBe("LEASE_LOST");
    expect(isLeaseError((reason as Error).cause) && ((reason as Error).cause as { code: string }).code).toBe(
      "LEASE_NOT_FOUND",
    );
  });

  it("an event loop that stalls past the lease's end finds it lost before it sends anything more", async () => {
    const { leases } = counted();
    let thrown: unknown;
    let renewedDuringStall = false;
    await leases.withLease(async ({ assertHeld, signal }) => {
      assertHeld(); // held: nothing thrown
      const until = Date.now() + 450; // longer than the 300 ms lease; no timer runs meanwhile
      while (Date.now() < until) {}
      // Straight after the stall, before any timer or answer is handled: the holder's clock decides.
      try {
        assertHeld();
      } catch (error) {
        thrown = error;
      }
      renewedDuringStall = !signal.aborted && thrown === undefined;
    });
    expect(renewedDuringStall).toBe(false);
    expect(isLeaseError(thrown) && thrown.code).toBe("LEASE_LOST");
  });

  it("with renewal off the lease still ends on the holder's clock", async () => {
    const { calls, leases } = counted();
    let reason: unknown;
    await leases.withLease(
      async ({ signal }) => {
        await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
        reason = signal.reason;
      },
      { heartbeatMs: 0 },
    );
    expect(calls.renew).toBe(0);
    expect(isLeaseError(reason) && reason.code).toBe("LEASE_LOST");
  });

  it("a bad option is refused before anything is acquired: no lease is left behind", async () => {
    const { coordinator, calls, leases } = counted();
    await expect(leases.withLease(() => "never", { heartbeatMs: -1 })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    expect(calls.acquire).toBe(0);
    expect((await coordinator.stats()).held).toBe(0);
  });

  it("a caller that gave up while its grant was on the way gives the slot back at once", async () => {
    const { coordinator, calls, leases } = counted();
    const controller = new AbortController();
    const acquire = leases.acquire.bind(leases);
    // The grant arrives, and the caller's signal is aborted in the same turn, before the work starts.
    leases.acquire = async (...args) => {
      const lease = await acquire(...args);
      controller.abort(new Error("caller gone"));
      return lease;
    };
    await expect(leases.withLease(() => "never", { signal: controller.signal })).rejects.toThrow("caller gone");
    expect(calls.release).toBe(1);
    expect((await coordinator.stats()).held).toBe(0);
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
        reason = signal.reason;
      });
      expect(isLeaseError(reason) && reason.code).toBe("LEASE_LOST");
      expect((await c.coordinator.stats()).held).toBe(0);
    });

    it("a grant from the queue is valid from when its call arrived: its wait counts, not only its window", async () => {
      const c = counted(1500, 300);
      const first = await c.leases.acquire();
      const sentAt = Date.now();
      const second = c.leases.acquire({}, "later");
      await expect.poll(async () => (await c.coordinator.stats()).waiting).toBe(1);
      await sleep(200);
      await c.leases.release(first);
      const lease = await second;
      const waited = Date.now() - sentAt;
      // It lives the 300 ms window from its grant; counted from the call, that is the wait plus the window.
      expect(lease.expiresAt - lease.grantedAt).toBe(300);
      expect(lease.validForMs).toBeGreaterThanOrEqual(300 + 190);
      expect(lease.validForMs).toBeLessThanOrEqual(300 + waited);
      await c.leases.release(lease);
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

/** The in-process coordinator `oneWayMs` away: every call and every answer takes that long to travel. */
function distant(oneWayMs: number, config = { limit: 2, maxQueue: 50, waitMs: 5000, leaseTtlMs: 1500 }) {
  const coordinator = memoryCoordinator(config);
  const far = { ...coordinator } as typeof coordinator;
  for (const name of ["acquire", "release", "renew", "stats"] as const) {
    const inner = coordinator[name] as (...args: unknown[]) => Promise<unknown>;
    (far as Record<string, unknown>)[name] = async (...args: unknown[]) => {
      await sleep(oneWayMs);
      const answer = await inner(...args);
      await sleep(oneWayMs);
      return answer;
    };
  }
  return { coordinator, far };
}

describe("the claim window follows the measured round trip", () => {
  it("a nearby coordinator's window is the lower bound; one 60 ms away each way gets about four of its round trips", async () => {
    const near = new Leases(memoryCoordinator({ limit: 2, maxQueue: 5, waitMs: 2000, leaseTtlMs: 1500 }));
    const { far: farCoordinator } = distant(60);
    const far = new Leases(farCoordinator);
    expect(near.claimMs).toBe(CLAIM_WINDOW.initialMs); // nothing measured yet
    for (const leases of [near, far]) for (let i = 0; i < 4; i++) await leases.release(await leases.acquire());
    expect(near.claimMs).toBeGreaterThanOrEqual(CLAIM_WINDOW.minMs);
    expect(near.claimMs).toBeLessThan(far.claimMs!);
    // Every round trip to `far` takes at least 120 ms: the window asked for is at least four of them.
    expect(far.claimMs).toBeGreaterThanOrEqual(4 * 120);
    expect(far.claimMs).toBeLessThanOrEqual(CLAIM_WINDOW.maxMs);
    // A fixed window stays fixed.
    const fixed = new Leases(farCoordinator, { claimMs: 300 });
    await fixed.release(await fixed.acquire());
    expect(fixed.claimMs).toBe(300);
  });

  it("clients of one pool name in a process share the measure: a client made per request starts from it", async () => {
    const { far } = distant(60);
    const pool = `shared-${crypto.randomUUID()}`;
    const first = new Leases(far, { pool });
    for (let i = 0; i < 3; i++) await first.release(await first.acquire());
    const next = new Leases(far, { pool });
    expect(next.claimMs).toBe(first.claimMs);
    expect(next.claimMs).toBeGreaterThanOrEqual(4 * 120);
    // Unnamed, a client keeps its own.
    expect(new Leases(far).claimMs).toBe(CLAIM_WINDOW.initialMs);
  });

  it("holders of a slow coordinator still claim in time: no LEASE_LOST, no ACQUIRE_TIMEOUT, no lapsed lease", async () => {
    const { coordinator, far } = distant(60);
    const leases = new Leases(far);
    const failures: unknown[] = [];
    let lost = 0;
    let maxHeld = 0;
    let fromQueue = 0;
    const sampling = setInterval(() => void coordinator.stats().then((s) => (maxHeld = Math.max(maxHeld, s.held))), 20);
    const until = Date.now() + 2500;
    // Six callers on two slots: most grants come from the queue and are claimed by the first beat.
    await Promise.all(
      Array.from({ length: 6 }, async () => {
        while (Date.now() < until) {
          await leases
            .withLease(async ({ lease, signal }) => {
              if (lease.expiresAt - lease.grantedAt < 1500) fromQueue++;
              await sleep(250);
              if (signal.aborted) lost++;
            })
            .catch((error: unknown) => failures.push(error));
        }
      }),
    );
    clearInterval(sampling);
    expect(failures).toEqual([]);
    expect(lost).toBe(0);
    expect(fromQueue).toBeGreaterThan(3);
    expect((await coordinator.stats()).counters).toMatchObject({ expired: 0, timedOut: 0 });
    expect(maxHeld).toBeLessThanOrEqual(2);
  });

  it("a window fixed below the round trip loses a live holder's grant from the queue (why the window follows it)", async () => {
    const { far } = distant(60, { limit: 1, maxQueue: 5, waitMs: 5000, leaseTtlMs: 1500 });
    const leases = new Leases(far, { claimMs: 100 });
    const first = await leases.acquire();
    let reason: unknown;
    const held = leases.withLease(async ({ signal }) => {
      await sleep(400);
      reason = signal.reason;
    });
    await sleep(200);
    await leases.release(first);
    await held;
    expect(isLeaseError(reason) && reason.code).toBe("LEASE_LOST");
  });

  it("a vanished waiter's slot comes back one window after its grant: the floor next to the coordinator", async () => {
    const coordinator = memoryCoordinator({ limit: 1, maxQueue: 5, waitMs: 5000, leaseTtlMs: 1500 });
    const leases = new Leases(coordinator);
    for (let i = 0; i < 4; i++) await leases.release(await leases.acquire());
    const windowMs = leases.claimMs!;
    expect(windowMs).toBe(CLAIM_WINDOW.minMs);
    const first = await leases.acquire();
    void leases.acquire({}, "later"); // its caller is gone: it never claims
    await expect.poll(async () => (await coordinator.stats()).waiting).toBe(1);
    const next = leases.acquire({ holder: "next" });
    await expect.poll(async () => (await coordinator.stats()).waiting).toBe(2);
    const releasedAt = Date.now();
    await leases.release(first);
    const lease = await next;
    const backMs = Date.now() - releasedAt;
    expect(backMs).toBeGreaterThanOrEqual(windowMs - 5);
    expect(backMs).toBeLessThan(windowMs + 250);
    console.log(`a vanished waiter's slot came back ${backMs} ms after its grant (claim window ${windowMs} ms)`);
    await leases.release(lease);
  });
});
