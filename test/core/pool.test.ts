import { describe, expect, it } from "vitest";
import {
  type PoolConfig,
  type PoolState,
  acquire,
  cancel,
  configFromEnv,
  createPool,
  isLeaseError,
  nextWakeAt,
  reconfigure,
  release,
  renew,
  stats,
  tick,
} from "../../src/core/index.ts";

const config: PoolConfig = { limit: 2, maxQueue: 2, waitMs: 1000, leaseTtlMs: 10_000 };

function pool(overrides: Partial<PoolConfig> = {}): PoolState {
  return createPool({ ...config, ...overrides });
}

function grant(p: PoolState, id: string, now: number, waitMs?: number) {
  const { outcome } = acquire(p, { leaseId: id, holder: `h-${id}`, waitMs }, now);
  if (outcome.status !== "granted") throw new Error(`expected a grant for ${id}, got ${outcome.status}`);
  return outcome.lease;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isLeaseError(e) ? e.code : `not a LeaseError: ${String(e)}`;
  }
  return undefined;
}

describe("acquire", () => {
  it("grants while slots are free, with increasing fences", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    const b = grant(p, "b", 5);
    expect([a.fence, b.fence]).toEqual([1, 2]);
    expect(a.expiresAt).toBe(10_000);
    expect(b.holder).toBe("h-b");
    expect(stats(p, 5).held).toBe(2);
  });

  it.each([
    { name: "queues when full", waiting: 0, expected: "queued" },
    { name: "queues up to maxQueue", waiting: 1, expected: "queued" },
    { name: "sheds past maxQueue with QUEUE_FULL", waiting: 2, expected: "QUEUE_FULL" },
  ])("$name", ({ waiting, expected }) => {
    const p = pool();
    grant(p, "a", 0);
    grant(p, "b", 0);
    for (let i = 0; i < waiting; i++) acquire(p, { leaseId: `w${i}`, holder: "w" }, 1);
    const { outcome } = acquire(p, { leaseId: "x", holder: "x" }, 2);
    expect(outcome.status === "rejected" ? outcome.code : outcome.status).toBe(expected);
    if (outcome.status === "rejected") {
      expect(outcome.retryAfterMs).toBeGreaterThan(0);
      expect(outcome.message).toContain("limit 2, 2 held, 2 waiting");
      expect(p.counters.rejected).toBe(1);
    }
  });

  it("with waitMs 0 answers ACQUIRE_TIMEOUT at once instead of queueing", () => {
    const p = pool();
    grant(p, "a", 0);
    grant(p, "b", 0);
    const { outcome } = acquire(p, { leaseId: "c", holder: "c", waitMs: 0 }, 1);
    expect(outcome).toMatchObject({ status: "rejected", code: "ACQUIRE_TIMEOUT" });
    expect(p.queue).toHaveLength(0);
  });

  it("with queue: false grants a free slot, and otherwise defers without queueing, shedding or counting", () => {
    const p = pool();
    expect(acquire(p, { leaseId: "a", holder: "a", queue: false }, 0).outcome).toMatchObject({
      status: "granted",
      lease: { fence: 1 },
    });
    grant(p, "b", 0);
    acquire(p, { leaseId: "w1", holder: "w1" }, 0);
    acquire(p, { leaseId: "w2", holder: "w2" }, 0);
    // Full and the queue at its cap: a single call would be shed with QUEUE_FULL.
    const before = stats(p, 1);
    expect(acquire(p, { leaseId: "c", holder: "c", queue: false }, 1).outcome).toEqual({ status: "deferred" });
    expect(acquire(p, { leaseId: "d", holder: "d", waitMs: 0, queue: false }, 1).outcome).toEqual({
      status: "deferred",
    });
    expect(stats(p, 1)).toEqual(before);
    // Validation comes first: a bad request is refused, not deferred.
    expect(codeOf(() => acquire(p, { leaseId: "e", holder: "e", ttlMs: 0, queue: false }, 1))).toBe("INVALID_ARGUMENT");
  });

  it("does not jump the queue when a slot is free but others wait", () => {
    const p = pool({ limit: 1 });
    const a = grant(p, "a", 0);
    acquire(p, { leaseId: "w", holder: "w" }, 1);
    // w is granted by the release itself, so a newcomer finds the pool full.
    const { effects } = release(p, { leaseId: a.id, fence: a.fence }, 2);
    expect(effects.granted.map((l) => l.id)).toEqual(["w"]);
    expect(acquire(p, { leaseId: "n", holder: "n" }, 3).outcome.status).toBe("queued");
  });

  it.each([
    { field: "leaseId", req: { leaseId: "", holder: "h" } },
    { field: "leaseId", req: { leaseId: 42, holder: "h" } },
    { field: "holder", req: { leaseId: "a", holder: "x".repeat(201) } },
    { field: "waitMs", req: { leaseId: "a", holder: "h", waitMs: -1 } },
    { field: "waitMs", req: { leaseId: "a", holder: "h", waitMs: Number.NaN } },
    { field: "waitMs", req: { leaseId: "a", holder: "h", waitMs: 1e12 } },
    { field: "ttlMs", req: { leaseId: "a", holder: "h", ttlMs: 0 } },
    { field: "ttlMs", req: { leaseId: "a", holder: "h", ttlMs: "5" } },
  ])("rejects a bad $field with INVALID_ARGUMENT and changes nothing", ({ req }) => {
    const p = pool();
    const before = stats(p, 0);
    expect(codeOf(() => acquire(p, req as never, 0))).toBe("INVALID_ARGUMENT");
    expect(stats(p, 0)).toEqual(before);
  });

  it("refuses a lease id already in use", () => {
    const p = pool();
    grant(p, "a", 0);
    expect(codeOf(() => acquire(p, { leaseId: "a", holder: "again" }, 1))).toBe("INVALID_ARGUMENT");
  });
});

describe("queue", () => {
  it("grants waiters strictly in arrival order", () => {
    const p = pool({ limit: 1, maxQueue: 10 });
    let held = grant(p, "first", 0);
    for (const id of ["w1", "w2", "w3"]) acquire(p, { leaseId: id, holder: id }, 1);
    const order: string[] = [];
    for (let t = 2; t < 5; t++) {
      const { effects } = release(p, { leaseId: held.id, fence: held.fence }, t);
      expect(effects.granted).toHaveLength(1);
      held = effects.granted[0]!;
      order.push(held.id);
    }
    expect(order).toEqual(["w1", "w2", "w3"]);
  });

  it("times a waiter out exactly at its deadline, never granting it after", () => {
    const p = pool({ limit: 1 });
    const a = grant(p, "a", 0);
    acquire(p, { leaseId: "w", holder: "w", waitMs: 100 }, 0);
    expect(tick(p, 99).timedOut).toHaveLength(0);
    const fx = tick(p, 100);
    expect(fx.timedOut.map((w) => w.leaseId)).toEqual(["w"]);
    expect(release(p, { leaseId: a.id, fence: a.fence }, 101).effects.granted).toHaveLength(0);
    expect(p.counters.timedOut).toBe(1);
  });

  it("gives a slot freed after a waiter timed out to the next waiter", () => {
    const p = pool({ limit: 1 });
    const a = grant(p, "a", 0);
    acquire(p, { leaseId: "short", holder: "s", waitMs: 10 }, 0);
    acquire(p, { leaseId: "long", holder: "l", waitMs: 1000 }, 0);
    const { effects } = release(p, { leaseId: a.id, fence: a.fence }, 50);
    expect(effects.timedOut.map((w) => w.leaseId)).toEqual(["short"]);
    expect(effects.granted.map((l) => l.id)).toEqual(["long"]);
  });

  it("forgets a cancelled waiter", () => {
    const p = pool({ limit: 1 });
    grant(p, "a", 0);
    acquire(p, { leaseId: "w", holder: "w" }, 0);
    expect(cancel(p, "w", 1).removed).toBe(true);
    expect(cancel(p, "w", 1).removed).toBe(false);
    expect(stats(p, 1).waiting).toBe(0);
  });

  it("reports the next wake-up as the earliest expiry or deadline", () => {
    const p = pool({ limit: 1 });
    expect(nextWakeAt(p)).toBeNull();
    grant(p, "a", 0);
    expect(nextWakeAt(p)).toBe(10_000);
    acquire(p, { leaseId: "w", holder: "w", waitMs: 300 }, 5);
    expect(nextWakeAt(p)).toBe(305);
  });
});

describe("release and renew", () => {
  it("a double release changes nothing the second time", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    expect(release(p, { leaseId: a.id, fence: a.fence }, 1).outcome.status).toBe("ok");
    const again = release(p, { leaseId: a.id, fence: a.fence }, 2).outcome;
    expect(again).toMatchObject({ status: "failed", code: "LEASE_NOT_FOUND" });
    expect(p.counters.released).toBe(1);
  });

  it("a stale fence cannot free the current holder's slot", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    const { outcome } = release(p, { leaseId: a.id, fence: a.fence + 1 }, 1);
    expect(outcome).toMatchObject({ status: "failed", code: "STALE_FENCE" });
    expect(stats(p, 1).held).toBe(1);
  });

  it("an expired lease is reaped and answers LEASE_EXPIRED; its slot goes to a waiter", () => {
    const p = pool({ limit: 1 });
    const a = grant(p, "a", 0);
    acquire(p, { leaseId: "w", holder: "w", waitMs: 20_000 }, 1);
    const fx = tick(p, 10_000);
    expect(fx.expired.map((l) => l.id)).toEqual(["a"]);
    expect(fx.granted.map((l) => l.id)).toEqual(["w"]);
    expect(renew(p, { leaseId: a.id, fence: a.fence }, 10_001).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
  });

  it("release of a lease past its expiry but not yet reaped answers LEASE_EXPIRED", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    expect(release(p, { leaseId: a.id, fence: a.fence }, 10_000).outcome).toMatchObject({ code: "LEASE_EXPIRED" });
    expect(p.counters).toMatchObject({ expired: 1, released: 0 });
  });

  it("renew pushes the expiry out", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    const { outcome } = renew(p, { leaseId: a.id, fence: a.fence }, 9000, 5000);
    expect(outcome.status === "ok" && outcome.lease.expiresAt).toBe(14_000);
    expect(tick(p, 10_000).expired).toHaveLength(0);
  });

  it.each([
    { ref: null },
    { ref: { leaseId: "a" } },
    { ref: { leaseId: "a", fence: -1 } },
    { ref: { leaseId: "a", fence: 1.5 } },
    { ref: { leaseId: ["a"], fence: 1 } },
  ])("rejects a malformed reference $ref", ({ ref }) => {
    const p = pool();
    grant(p, "a", 0);
    expect(codeOf(() => release(p, ref as never, 1))).toBe("INVALID_ARGUMENT");
    expect(stats(p, 1).held).toBe(1);
  });
});

describe("restore, reconfigure, stats", () => {
  it("a restored pool keeps live leases and never reuses a fence", () => {
    const p = pool();
    const a = grant(p, "a", 0);
    const restored = createPool(config, { leases: p.leases.values(), nextFence: p.nextFence });
    expect(release(restored, { leaseId: a.id, fence: a.fence }, 1).outcome.status).toBe("ok");
    expect(grant(restored, "b", 2).fence).toBe(2);
  });

  it("lowering the limit revokes nothing but grants nothing until held is below it", () => {
    const p = pool({ limit: 3, maxQueue: 5 });
    const [a, b] = [grant(p, "a", 0), grant(p, "b", 0), grant(p, "c", 0)];
    reconfigure(p, { ...p.config, limit: 1 }, 1);
    acquire(p, { leaseId: "w", holder: "w" }, 1);
    expect(release(p, { leaseId: a!.id, fence: a!.fence }, 2).effects.granted).toHaveLength(0);
    expect(release(p, { leaseId: b!.id, fence: b!.fence }, 3).effects.granted).toHaveLength(0);
    expect(stats(p, 3)).toMatchObject({ held: 1, waiting: 1, limit: 1 });
  });

  it("reports wait percentiles, the oldest waiter's age and held leases by id prefix", () => {
    const p = pool({ limit: 1, maxQueue: 10 });
    let held = grant(p, "lease-aaaaaaaaaaaa", 0);
    acquire(p, { leaseId: "lease-bbbbbbbbbbbb", holder: "b" }, 10);
    const s1 = stats(p, 40);
    expect(s1.maxWaitMs).toBe(30);
    expect(s1.leases).toEqual([
      { idPrefix: "lease-aa", holder: "h-lease-aaaaaaaaaaaa", fence: 1, ageMs: 40, expiresInMs: 9960 },
    ]);
    held = release(p, { leaseId: held.id, fence: held.fence }, 210).effects.granted[0]!;
    const s2 = stats(p, 210);
    expect(s2.waitTimeMs.count).toBe(2);
    expect(s2.waitTimeMs.max).toBe(200);
    expect(s2.waitTimeMs.p99).toBeGreaterThan(100);
    expect(s2.waitTimeMs.p99).toBeLessThanOrEqual(200);
  });

  it.each([
    { env: { LEASE_LIMIT: "0" }, name: "LEASE_LIMIT" },
    { env: { LEASE_LIMIT: "ten" }, name: "LEASE_LIMIT" },
    { env: { LEASE_WAIT_MS: "-5" }, name: "LEASE_WAIT_MS" },
    { env: { LEASE_TTL_MS: "1.5" }, name: "LEASE_TTL_MS" },
  ])("configFromEnv rejects $env naming $name", ({ env, name }) => {
    try {
      configFromEnv(env);
      expect.unreachable();
    } catch (e) {
      expect(isLeaseError(e) && e.code).toBe("INVALID_CONFIG");
      expect((e as Error).message).toContain(name);
    }
  });

  it("configFromEnv reads defaults and overrides", () => {
    expect(configFromEnv({})).toEqual({ limit: 10, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 1500, queue: "adaptive" });
    expect(configFromEnv({ LEASE_LIMIT: "18", LEASE_MAX_QUEUE: "0" })).toMatchObject({ limit: 18, maxQueue: 0 });
  });
});
