import { describe, expect, it } from "vitest";
import {
  type AcquireRequest,
  type Lease,
  type PoolConfig,
  type PoolState,
  acquire,
  configFromEnv,
  createPool,
  isLeaseError,
  percentile,
  createHistogram,
  record,
  release,
  stats,
} from "../../src/core/index.ts";

function pool(config: Partial<PoolConfig> = {}): PoolState {
  return createPool({ limit: 3, maxQueue: 10_000, waitMs: 60_000, leaseTtlMs: 60_000, ...config });
}

let seq = 0;
function ask(p: PoolState, now: number, extra: Partial<AcquireRequest> = {}) {
  return acquire(p, { leaseId: `l${seq++}`, holder: "h", ...extra }, now);
}
function grantOf(r: ReturnType<typeof ask>): Lease {
  if (r.outcome.status !== "granted") throw new Error(`expected a grant, got ${r.outcome.status}`);
  return r.outcome.lease;
}

describe("priority classes", () => {
  it("keeps reserved slots for critical callers", () => {
    const p = pool({ reserved: 1 });
    grantOf(ask(p, 0));
    grantOf(ask(p, 0));
    expect(ask(p, 0).outcome.status).toBe("queued");
    expect(grantOf(ask(p, 0, { priority: "critical" })).priority).toBe("critical");
    expect(stats(p, 0)).toMatchObject({ held: 3, waiting: 1, reserved: 1 });
  });

  it("grants queued critical waiters before earlier normal and batch ones", () => {
    const p = pool();
    const held = [grantOf(ask(p, 0)), grantOf(ask(p, 0)), grantOf(ask(p, 0))];
    const b = ask(p, 1, { priority: "batch", leaseId: "batch" });
    const n = ask(p, 2, { leaseId: "normal" });
    const c = ask(p, 3, { priority: "critical", leaseId: "critical" });
    expect([b, n, c].map((r) => r.outcome.status)).toEqual(["queued", "queued", "queued"]);
    const order = held.flatMap((l, i) =>
      release(p, { leaseId: l.id, fence: l.fence }, 10 + i).effects.granted.map((g) => g.id),
    );
    expect(order).toEqual(["critical", "normal", "batch"]);
  });

  it("caps batch leases while normal traffic still gets slots", () => {
    const p = pool({ limit: 4, batchMax: 1 });
    grantOf(ask(p, 0, { priority: "batch" }));
    expect(ask(p, 0, { priority: "batch", leaseId: "b2" }).outcome.status).toBe("queued");
    grantOf(ask(p, 0));
    grantOf(ask(p, 0));
    expect(stats(p, 0)).toMatchObject({ held: 3, waiting: 1 });
  });

  it("rejects an unknown priority with INVALID_ARGUMENT", () => {
    const p = pool();
    try {
      ask(p, 0, { priority: "urgent" as never });
      expect.unreachable();
    } catch (e) {
      expect(isLeaseError(e) && e.code).toBe("INVALID_ARGUMENT");
    }
  });
});

describe("tenant fairness", () => {
  /**
   * Tenant "noisy" queues 100 requests for every one of "quiet"; every lease is held 10 ms.
   * Returns quiet's p99 wait in ms.
   */
  function quietP99(useTenants: boolean): number {
    // FIFO: without tenants, quiet waits behind the whole burst in arrival order.
    const p = pool({ limit: 4, queue: "fifo" });
    const holdMs = 10;
    const quietWaits = createHistogram();
    const enqueuedAt = new Map<string, number>();
    const running: Array<{ lease: Lease; until: number }> = [];
    const start = (l: Lease, now: number) => {
      running.push({ lease: l, until: now + holdMs });
      if (l.id.startsWith("quiet")) record(quietWaits, now - enqueuedAt.get(l.id)!);
    };
    for (let now = 0; now < 2000; now++) {
      for (let k = running.length - 1; k >= 0; k--) {
        const r = running[k]!;
        if (r.until > now) continue;
        running.splice(k, 1);
        for (const g of release(p, { leaseId: r.lease.id, fence: r.lease.fence }, now).effects.granted) start(g, now);
      }
      const arrivals: Array<[string, string]> = [];
      if (now < 1000) for (let i = 0; i < 10; i++) arrivals.push([`noisy-${now}-${i}`, "noisy"]);
      if (now < 1000 && now % 10 === 0) arrivals.push([`quiet-${now}`, "quiet"]);
      for (const [id, tenant] of arrivals) {
        enqueuedAt.set(id, now);
        const r = acquire(p, { leaseId: id, holder: tenant, tenant: useTenants ? tenant : undefined }, now);
        for (const g of r.effects.granted) start(g, now);
        if (r.outcome.status === "granted") start(r.outcome.lease, now);
      }
    }
    return percentile(quietWaits, 0.99);
  }

  it("a tenant sending 100× the requests of another cannot push the other's p99 wait past one hold time", () => {
    const fair = quietP99(true);
    const fifo = quietP99(false);
    // Bound: quiet is next in turn at the first slot that frees, within one 10 ms hold.
    expect(fair).toBeLessThanOrEqual(10);
    // Without tenants, quiet waits behind the whole burst.
    expect(fifo).toBeGreaterThan(100 * fair);
  });
});

describe("adaptive limit", () => {
  function run(p: PoolState, holdMs: number, rounds: number, start: number): number {
    let now = start;
    for (let i = 0; i < rounds; i++) {
      const l = grantOf(ask(p, now));
      now += holdMs;
      release(p, { leaseId: l.id, fence: l.fence }, now);
    }
    return now;
  }

  it("shrinks when hold times rise, never below the floor, and grows back when they recover", () => {
    const p = pool({ limit: 20, adaptive: { floor: 4 } });
    let now = run(p, 10, 50, 0);
    expect(stats(p, now).effectiveLimit).toBe(20);
    now = run(p, 60, 30, now);
    const slow = stats(p, now).effectiveLimit;
    expect(slow).toBeLessThan(10);
    expect(slow).toBeGreaterThanOrEqual(4);
    now = run(p, 10, 100, now);
    expect(stats(p, now).effectiveLimit).toBe(20);
  });

  it("keeps the limit shrunk while the database stays slow, by time rather than by number of releases", () => {
    const p = pool({ limit: 20, adaptive: { floor: 4 } });
    let now = run(p, 10, 50, 0);
    // 400 releases over 24 s of sustained slowness: still taken as slowness, not the new normal.
    now = run(p, 60, 400, now);
    expect(stats(p, now).effectiveLimit).toBeLessThan(10);
    // Minutes of it: by then it is the database's speed, and the limit returns to the maximum.
    now = run(p, 60, 3000, now);
    expect(stats(p, now).effectiveLimit).toBe(20);
  });

  it("holds back new grants while shrunk; leases already held are not revoked", () => {
    const p = pool({ limit: 6, adaptive: { floor: 2 } });
    let now = run(p, 5, 20, 0);
    now = run(p, 100, 30, now);
    const cap = stats(p, now).effectiveLimit;
    expect(cap).toBeLessThan(6);
    const granted = [];
    for (let i = 0; i < 6; i++) {
      const r = ask(p, now, { waitMs: 0 });
      if (r.outcome.status === "granted") granted.push(r.outcome.lease);
    }
    expect(granted).toHaveLength(cap);
  });

  it("is configured from LEASE_ADAPTIVE and LEASE_ADAPTIVE_FLOOR, off by default", () => {
    expect(configFromEnv({}).adaptive).toBeUndefined();
    expect(configFromEnv({ LEASE_LIMIT: "20", LEASE_ADAPTIVE: "on" }).adaptive).toEqual({
      floor: 5,
      tolerance: undefined,
    });
    expect(() => configFromEnv({ LEASE_ADAPTIVE: "maybe" })).toThrow(/LEASE_ADAPTIVE/);
    expect(() => configFromEnv({ LEASE_LIMIT: "5", LEASE_ADAPTIVE: "on", LEASE_ADAPTIVE_FLOOR: "9" })).toThrow(
      /LEASE_ADAPTIVE_FLOOR/,
    );
  });
});
