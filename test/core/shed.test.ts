import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { describe, expect, it } from "vitest";
import {
  type Lease,
  type PoolConfig,
  type PoolState,
  SHED_MARGIN,
  SHED_MIN_SAMPLES,
  acquire,
  cancel,
  createPool,
  release,
  restore,
  snapshot,
  stats,
  tick,
} from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";

/**
 * Hopeless waits told at once: a caller whose predicted wait (recent hold time × the waiters
 * certain to go first ÷ slots) is at least `SHED_MARGIN` × its deadline is answered
 * `ACQUIRE_TIMEOUT` now, with that prediction as Retry-After — once predictions are trusted.
 */
const HOLD_MS = 100;
// FIFO unless a case says otherwise: the training serves its queues in arrival order, as predicted.
const config: PoolConfig = { limit: 1, maxQueue: 100, waitMs: 10_000, leaseTtlMs: 60_000, queue: "fifo" };
let seq = 0;
const id = () => `w${++seq}`;

/** A pool at `now` that has seen `holds` steady 100 ms holds (no queue), and the time after them. */
function withHolds(holds: number, overrides: Partial<PoolConfig> = {}): { p: PoolState; now: number } {
  const p = createPool({ ...config, ...overrides });
  let now = 0;
  for (let i = 0; i < holds; i++) {
    const a = acquire(p, { leaseId: id(), holder: "h" }, now).outcome;
    if (a.status !== "granted") throw new Error("expected a grant");
    now += HOLD_MS;
    release(p, { leaseId: a.lease.id, fence: a.lease.fence }, now);
  }
  return { p, now };
}

/**
 * Serves `n` waiters queued at once behind a holder, one per 100 ms hold: each is served exactly
 * when predicted (the first is next in line: no prediction). Returns the time after.
 */
function serveQueue(p: PoolState, now: number, n: number): number {
  const first = acquire(p, { leaseId: id(), holder: "h" }, now).outcome;
  if (first.status !== "granted") throw new Error("expected a grant");
  for (let i = 0; i < n; i++) acquire(p, { leaseId: id(), holder: "q" }, now);
  let holding: Lease = first.lease;
  for (let i = 0; i < n; i++) {
    now += HOLD_MS;
    holding = release(p, { leaseId: holding.id, fence: holding.fence }, now).effects.granted[0]!;
  }
  now += HOLD_MS;
  release(p, { leaseId: holding.id, fence: holding.fence }, now);
  return now;
}

/** A pool whose predictions are trusted: steady holds, then enough waits measured, all on time. */
function trained(overrides: Partial<PoolConfig> = {}): { p: PoolState; now: number } {
  const { p, now } = withHolds(SHED_MIN_SAMPLES, overrides);
  return { p, now: serveQueue(p, now, SHED_MIN_SAMPLES + 1) };
}

/** Holds the one slot and queues `n` patient waiters behind it. */
function busy(p: PoolState, now: number, n: number, extra: Record<string, unknown> = {}): void {
  acquire(p, { leaseId: id(), holder: "h" }, now);
  for (let i = 0; i < n; i++) acquire(p, { leaseId: id(), holder: "q", ...extra }, now);
}

describe("hopeless waits told at once", () => {
  it("measures the prediction: waits served when predicted show no error, and the stats say shedding is on", () => {
    const { p, now } = trained();
    const s = stats(p, now).prediction!;
    expect(s).toMatchObject({ waits: SHED_MIN_SAMPLES, early: 0, earlyShare: 0, holdMs: HOLD_MS, shedding: true });
    expect(s.meanAbsErrorMs).toBe(0);
    expect(s.meanPredictedMs).toBe(s.meanActualMs);
  });

  it("a caller that cannot be served by its deadline is answered now, Retry-After the predicted wait", () => {
    const { p, now } = trained();
    busy(p, now, 3);
    const before = stats(p, now);
    // 3 ahead, 100 ms holds, 1 slot: served in 400 ms; its deadline is 100 ms.
    const { outcome } = acquire(p, { leaseId: id(), holder: "late", waitMs: 100 }, now);
    expect(outcome).toMatchObject({ status: "rejected", code: "ACQUIRE_TIMEOUT", retryAfterMs: 400 });
    if (outcome.status === "rejected") expect(outcome.message).toMatch(/predicted wait is 400 ms/);
    const after = stats(p, now);
    expect(after.waiting).toBe(before.waiting);
    expect(after.counters.timedOut).toBe(before.counters.timedOut + 1);
    expect(after.prediction!.shed).toBe(1);
  });

  it("a caller whose deadline leaves room, or is within the margin, waits as before", () => {
    const { p, now } = trained();
    busy(p, now, 3);
    // Predicted 400 ms: a deadline of 400 / 1.5 ms or more is not hopeless.
    const edge = Math.ceil(400 / SHED_MARGIN) + 1;
    expect(acquire(p, { leaseId: id(), holder: "edge", waitMs: edge }, now).outcome.status).toBe("queued");
    expect(acquire(p, { leaseId: id(), holder: "patient", waitMs: 5000 }, now).outcome.status).toBe("queued");
  });

  it("no history, no shed: with no hold time or too few measured waits, a deep queue still queues", () => {
    const fresh = createPool(config);
    busy(fresh, 0, 10);
    expect(acquire(fresh, { leaseId: id(), holder: "x", waitMs: 1 }, 0).outcome.status).toBe("queued");
    // Hold times known, but fewer measured waits than SHED_MIN_SAMPLES: the prediction is not trusted yet.
    const { p, now } = withHolds(SHED_MIN_SAMPLES);
    const later = serveQueue(p, now, SHED_MIN_SAMPLES - 1);
    expect(stats(p, later).prediction).toMatchObject({ waits: SHED_MIN_SAMPLES - 2, shedding: false });
    busy(p, later, 10);
    expect(acquire(p, { leaseId: id(), holder: "x", waitMs: 1 }, later).outcome.status).toBe("queued");
  });

  it("one next in line is never shed: its wait is the rest of a hold", () => {
    const { p, now } = trained();
    busy(p, now, 0);
    expect(acquire(p, { leaseId: id(), holder: "next", waitMs: 1 }, now).outcome.status).toBe("queued");
  });

  it("counts only the waiters certain to go first: a more urgent class, or its own tenant", () => {
    const { p, now } = trained();
    busy(p, now, 3, { tenant: "a" });
    // Tenant b's turn may come first: nobody counts as ahead of it.
    expect(acquire(p, { leaseId: id(), holder: "b", tenant: "b", waitMs: 100 }, now).outcome.status).toBe("queued");
    // Tenant a's own waiters go first: hopeless.
    expect(acquire(p, { leaseId: id(), holder: "a", tenant: "a", waitMs: 100 }, now).outcome.status).toBe("rejected");
    // Critical passes every normal waiter.
    const critical = acquire(p, { leaseId: id(), holder: "c", priority: "critical", waitMs: 10 }, now).outcome;
    expect(critical.status).toBe("queued");
  });

  it("a waiter ahead whose own deadline passes before its turn is not counted", () => {
    const { p, now } = trained();
    acquire(p, { leaseId: id(), holder: "h" }, now);
    // Three waiters ahead that give up after 50 ms: gone before any slot frees.
    for (let i = 0; i < 3; i++) acquire(p, { leaseId: id(), holder: "q", waitMs: 50 }, now);
    expect(acquire(p, { leaseId: id(), holder: "x", waitMs: 100 }, now).outcome.status).toBe("queued");
  });

  it("predictions that came out far too long (waiters ahead left) pause shedding: the guard", () => {
    const { p, now: start } = trained();
    let now = start;
    // Twice: three waiters queue behind a holder, the two ahead leave, and the third is served at
    // the first release — 100 ms against a prediction of 300.
    for (let round = 0; round < 2; round++) {
      const h = acquire(p, { leaseId: id(), holder: "h" }, now).outcome;
      const ahead = [id(), id()];
      for (const a of ahead) acquire(p, { leaseId: a, holder: "q" }, now);
      acquire(p, { leaseId: id(), holder: "third" }, now);
      for (const a of ahead) cancel(p, a, now);
      now += HOLD_MS;
      if (h.status !== "granted") throw new Error("expected a grant");
      const third = release(p, { leaseId: h.lease.id, fence: h.lease.fence }, now).effects.granted[0]!;
      now += HOLD_MS;
      release(p, { leaseId: third.id, fence: third.fence }, now);
    }
    const s = stats(p, now).prediction!;
    expect(s.early).toBe(2);
    expect(s.earlyShare).toBeGreaterThan(0.05);
    expect(s.shedding).toBe(false);
    busy(p, now, 3);
    // Hopeless by the forecast, but the forecasts have been wrong: it waits.
    expect(acquire(p, { leaseId: id(), holder: "late", waitMs: 100 }, now).outcome.status).toBe("queued");
  });

  it("is off while paused or recovering: slots do not free at the observed pace then", () => {
    const { p, now } = trained();
    busy(p, now, 3);
    p.paused = true;
    expect(acquire(p, { leaseId: id(), holder: "late", waitMs: 100 }, now).outcome.status).toBe("queued");
  });

  it("under newest-first, the oldest whose turn cannot come in time are told at the first transition that finds it so", () => {
    for (const queue of ["adaptive", "fifo"] as const) {
      const { p, now: start } = trained({ queue });
      let now = start;
      acquire(p, { leaseId: id(), holder: "h" }, now);
      const oldest = id();
      acquire(p, { leaseId: oldest, holder: "old", waitMs: 400 }, now);
      // A standing queue: the oldest waits past the target for the interval, newer ones keep coming.
      const told: Array<{ leaseId: string; deadline: number; at: number }> = [];
      for (let t = 0; t < 6; t++) {
        now += 30;
        const { effects } = acquire(p, { leaseId: id(), holder: "new" }, now);
        for (const w of effects.timedOut) told.push({ leaseId: w.leaseId, deadline: w.deadline, at: now });
      }
      for (const w of tick(p, now + 1).timedOut) told.push({ leaseId: w.leaseId, deadline: w.deadline, at: now + 1 });
      if (queue === "adaptive") {
        // Newest-first: at 150 ms four newer waiters go first (500 ms), its deadline is 250 ms away.
        expect(told).toEqual([{ leaseId: oldest, deadline: start + 150, at: start + 150 }]);
        expect(stats(p, now).queue.lifo).toBe(true);
        expect(stats(p, now).prediction!.shed).toBe(1);
      } else {
        // Oldest first: it is next in line, nothing to tell.
        expect(told).toEqual([]);
      }
    }
  });

  it("the prediction's memory outlives a restore (the local adapter loads the pool per transition)", () => {
    const { p, now } = trained();
    const again = restore(config, JSON.parse(JSON.stringify(snapshot(p))), p.leases.values(), p.queue);
    expect(stats(again, now).prediction).toEqual(stats(p, now).prediction);
    busy(again, now, 3);
    expect(acquire(again, { leaseId: id(), holder: "late", waitMs: 100 }, now).outcome.status).toBe("rejected");
  });

  it("the metrics show the sheds, the forecast against the actual waits, its error and whether it sheds", () => {
    const { p, now } = trained();
    busy(p, now, 3);
    acquire(p, { leaseId: id(), holder: "late", waitMs: 100 }, now);
    const text = formatMetrics("main", { ...stats(p, now), limitOverride: null, reconciliation: null });
    const m = new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f.metrics]));
    const value = (name: string) => m.get(name)?.map((x) => x.value);
    expect(value("leasegate_acquire_hopeless_total")).toEqual(["1"]);
    expect(value("leasegate_wait_forecasts_total")).toEqual([String(SHED_MIN_SAMPLES)]);
    expect(m.get("leasegate_wait_forecast_mean_seconds")?.map((x) => x.labels?.of)).toEqual(["forecast", "actual"]);
    expect(value("leasegate_wait_forecast_error_seconds")).toEqual(["0"]);
    expect(value("leasegate_wait_forecast_early_ratio")).toEqual(["0"]);
    expect(value("leasegate_shedding")).toEqual(["1"]);
  });
});
