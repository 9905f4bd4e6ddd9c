import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { describe, expect, it } from "vitest";
import {
  type AcquireRequest,
  type Lease,
  type PoolConfig,
  type PoolState,
  QUEUE_INTERVAL_MS,
  QUEUE_TARGET_MS,
  acquire,
  createPool,
  isLeaseError,
  poolSettings,
  release,
  restore,
  snapshot,
  stats,
  tick,
  validateConfig,
} from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";

// Tables of (state, event, now) → result for the queue modes: no clock, no timers.
const T = QUEUE_TARGET_MS;
const I = QUEUE_INTERVAL_MS;

function pool(config: Partial<PoolConfig> = {}): PoolState {
  return createPool({ limit: 1, maxQueue: 100, waitMs: 60_000, leaseTtlMs: 60_000, ...config });
}

function ask(p: PoolState, id: string, now: number, extra: Partial<AcquireRequest> = {}) {
  return acquire(p, { leaseId: id, holder: "h", ...extra }, now).outcome;
}

function hold(p: PoolState, id: string, now: number, extra: Partial<AcquireRequest> = {}): Lease {
  const out = ask(p, id, now, extra);
  if (out.status !== "granted") throw new Error(`expected a grant, got ${out.status}`);
  return out.lease;
}

/** Releases `lease` at `now` and returns who was granted its slot (and the lease to free next). */
function handOver(p: PoolState, lease: Lease, now: number): Lease {
  const granted = release(p, { leaseId: lease.id, fence: lease.fence }, now).effects.granted;
  expect(granted).toHaveLength(1);
  return granted[0]!;
}

/** Frees the slot `times` times in a row at `now`, returning the order the queue was served in. */
function drain(p: PoolState, first: Lease, now: number, times: number): string[] {
  const order: string[] = [];
  let lease = first;
  for (let i = 0; i < times; i++) {
    lease = handOver(p, lease, now);
    order.push(lease.id);
  }
  return order;
}

describe("LEASE_QUEUE=fifo", () => {
  it("serves the oldest first however long the queue stands", () => {
    const p = pool({ queue: "fifo" });
    const held = hold(p, "held", 0);
    for (const id of ["w1", "w2", "w3"]) ask(p, id, 0);
    const late = 10 * (T + I);
    tick(p, late);
    expect(p.standing).toEqual({ since: null, lifo: false });
    expect(stats(p, late).queue).toEqual({ mode: "fifo", lifo: false });
    expect(drain(p, held, late, 3)).toEqual(["w1", "w2", "w3"]);
  });
});

describe("LEASE_QUEUE=adaptive", () => {
  it("stays FIFO while the oldest waiter is within the target, and for the interval after it is not", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0);
    for (const id of ["w1", "w2", "w3"]) ask(p, id, 0);
    // Above the target since T; the interval has not passed yet at T + I - 1.
    tick(p, T + 1);
    expect(p.standing).toEqual({ since: T, lifo: false });
    expect(drain(p, held, T + I - 1, 1)).toEqual(["w1"]);
    expect(stats(p, T + I - 1).queue).toEqual({ mode: "adaptive", lifo: false });
  });

  it("serves the newest first once the queue has stood above the target for the interval", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0);
    for (const [id, at] of [
      ["w1", 0],
      ["w2", 10],
      ["w3", 20],
      ["w4", 30],
    ] as const)
      ask(p, id, at);
    // No transition in between: the queue crossed the target at T (w1's age), not when first seen.
    const at = T + I;
    tick(p, at);
    expect(p.standing).toEqual({ since: T, lifo: true });
    expect(stats(p, at).queue).toEqual({ mode: "adaptive", lifo: true });
    expect(drain(p, held, at, 2)).toEqual(["w4", "w3"]);
  });

  it("returns to FIFO when the queue drains below the target", () => {
    const p = pool({ limit: 2, queue: "adaptive" });
    const a = hold(p, "a", 0);
    const b = hold(p, "b", 0);
    for (const id of ["w1", "w2"]) ask(p, id, 0);
    tick(p, T + I);
    expect(p.standing.lifo).toBe(true);
    // Both slots free: the queue empties; no standing queue is left.
    const first = handOver(p, a, T + I);
    handOver(p, b, T + I);
    expect(first.id).toBe("w2");
    expect(p.standing).toEqual({ since: null, lifo: false });
    // A new queue is served oldest first again.
    for (const [id, at] of [
      ["x1", 200],
      ["x2", 210],
    ] as const)
      ask(p, id, at);
    expect(drain(p, first, 220, 1)).toEqual(["x1"]);
    expect(stats(p, 220).queue.lifo).toBe(false);
  });

  it("returns to FIFO when only waiters younger than the target are left", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0);
    ask(p, "old", 0, { waitMs: 200 });
    tick(p, T + I);
    expect(p.standing.lifo).toBe(true);
    // The old waiter times out at its deadline; the newcomers have waited less than the target.
    ask(p, "n1", 190);
    ask(p, "n2", 195);
    tick(p, 200);
    expect(p.standing).toEqual({ since: null, lifo: false });
    expect(drain(p, held, 210, 1)).toEqual(["n1"]);
  });

  it("lets the oldest waiters meet their deadlines: never granted after them", () => {
    const p = pool({ queue: "adaptive" });
    let lease = hold(p, "held", 0);
    ask(p, "old", 0, { waitMs: 300 });
    const order: string[] = [];
    const timedOut: string[] = [];
    // A caller joins every 50 ms and, from 150 ms on, a slot frees as it does: each goes to the newest.
    for (let t = 100; t <= 400; t += 50) {
      const joined = acquire(p, { leaseId: `n${t}`, holder: "h", waitMs: 1000 }, t);
      timedOut.push(...joined.effects.timedOut.map((w) => w.leaseId));
      if (t < 150) continue;
      const { effects } = release(p, { leaseId: lease.id, fence: lease.fence }, t);
      timedOut.push(...effects.timedOut.map((w) => w.leaseId));
      lease = effects.granted[0]!;
      order.push(lease.id);
    }
    expect(order).toEqual(["n150", "n200", "n250", "n300", "n350", "n400"]);
    expect(timedOut).toEqual(["old"]);
    expect(p.counters.timedOut).toBe(1);
  });

  it("keeps the priority classes first: newest first only within a class", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0);
    ask(p, "b1", 0, { priority: "batch" });
    ask(p, "n1", 0);
    ask(p, "c1", 10, { priority: "critical" });
    ask(p, "n2", 20);
    ask(p, "c2", 30, { priority: "critical" });
    ask(p, "b2", 40, { priority: "batch" });
    tick(p, T + I);
    expect(p.standing.lifo).toBe(true);
    expect(drain(p, held, T + I, 6)).toEqual(["c2", "c1", "n2", "n1", "b2", "b1"]);
  });

  it("keeps the tenants' turns: newest first only within a tenant's turn", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0, { tenant: "a" });
    for (const [id, tenant, at] of [
      ["a1", "a", 0],
      ["a2", "a", 1],
      ["a3", "a", 2],
      ["b1", "b", 3],
      ["b2", "b", 4],
    ] as const)
      ask(p, id, at, { tenant });
    tick(p, T + I);
    expect(p.standing.lifo).toBe(true);
    // Tenant a was served last (its lease is held): b goes first, then they alternate.
    expect(drain(p, held, T + I, 5)).toEqual(["b2", "a3", "b1", "a2", "a1"]);
  });

  it("keeps the standing queue across a snapshot (the local adapter loads the pool per transition)", () => {
    const p = pool({ queue: "adaptive" });
    const held = hold(p, "held", 0);
    for (const id of ["w1", "w2"]) ask(p, id, 0);
    tick(p, T + 1);
    const snap = JSON.parse(JSON.stringify(snapshot(p)));
    // Loaded afresh for the next transition: the queue has stood since T, not since it was loaded.
    const again = restore(p.config, snap, [...p.leases.values()], p.queue);
    expect(again.standing).toEqual({ since: T, lifo: false });
    tick(again, T + I);
    expect(again.standing.lifo).toBe(true);
    expect(drain(again, held, T + I, 1)).toEqual(["w2"]);
    // A pool now configured `fifo` drops what was stored under `adaptive`.
    const fifo = restore({ ...p.config, queue: "fifo" }, JSON.parse(JSON.stringify(snapshot(again))), [], []);
    expect(fifo.standing).toEqual({ since: null, lifo: false });
    // A snapshot written before the detector existed reads as no standing queue.
    const { standing: _, ...older } = snap;
    expect(restore(p.config, older, [], []).standing).toEqual({ since: null, lifo: false });
  });
});

describe("the LEASE_QUEUE setting", () => {
  it("is adaptive by default, fifo when asked, and INVALID_CONFIG for anything else", () => {
    expect(poolSettings({}).config.queue).toBe("adaptive");
    expect(poolSettings({ LEASE_QUEUE: "" }).config.queue).toBe("adaptive");
    expect(poolSettings({ LEASE_QUEUE: "fifo" }).config.queue).toBe("fifo");
    expect(poolSettings({ LEASE_QUEUE: " adaptive " }).config.queue).toBe("adaptive");
    for (const bad of ["lifo", "ADAPTIVE", "on", "1"]) {
      try {
        poolSettings({ LEASE_QUEUE: bad });
        expect.unreachable(`LEASE_QUEUE=${bad} was accepted`);
      } catch (error) {
        expect(isLeaseError(error) && error.code).toBe("INVALID_CONFIG");
        expect((error as Error).message).toContain("LEASE_QUEUE");
      }
    }
  });

  it("is checked in a pool configuration too", () => {
    const base = { limit: 1, maxQueue: 1, waitMs: 1, leaseTtlMs: 1 };
    expect(validateConfig({ ...base, queue: "adaptive" }).queue).toBe("adaptive");
    expect(validateConfig({ ...base, queue: "fifo" }).queue).toBe("fifo");
    // Written in code without `queue`: the same default as LEASE_QUEUE unset.
    expect(validateConfig(base).queue).toBe("adaptive");
    expect(stats(createPool(base), 0).queue.mode).toBe("adaptive");
    expect(() => validateConfig({ ...base, queue: "lifo" as never })).toThrow(
      expect.objectContaining({ code: "INVALID_CONFIG" }),
    );
  });
});

describe("the queue mode in the metrics", () => {
  const metrics = (p: PoolState, now: number) => {
    const text = formatMetrics("main", { ...stats(p, now), limitOverride: null, reconciliation: null });
    return new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f.metrics]));
  };

  it("shows the mode configured and whether LIFO is in force now", () => {
    const p = pool({ queue: "adaptive" });
    hold(p, "held", 0);
    for (const id of ["w1", "w2"]) ask(p, id, 0);
    const before = metrics(p, 0);
    expect(before.get("leasegate_queue_mode")).toEqual([{ labels: { pool: "main", mode: "adaptive" }, value: "1" }]);
    expect(before.get("leasegate_queue_lifo")?.[0]?.value).toBe("0");
    tick(p, T + I);
    expect(metrics(p, T + I).get("leasegate_queue_lifo")?.[0]?.value).toBe("1");
    const fifo = metrics(pool({ queue: "fifo" }), 0);
    expect(fifo.get("leasegate_queue_mode")?.[0]?.labels).toEqual({ pool: "main", mode: "fifo" });
    expect(fifo.get("leasegate_queue_lifo")?.[0]?.value).toBe("0");
  });
});
