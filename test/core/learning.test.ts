import { describe, expect, it } from "vitest";
import {
  CLOCK_MARGIN_MS,
  FENCE_STEP,
  HORIZON_STEP_MS,
  acquire,
  createPool,
  nextBounds,
  nextWakeAt,
  release,
  renew,
  startLearning,
  stats,
  tick,
} from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";

const config = { limit: 2, maxQueue: 5, waitMs: 1000, leaseTtlMs: 1500 };

/** A pool restarted at `now` whose stored bounds say fences below 100 and expiries up to 2000 were handed out. */
function restarted(now = 1000) {
  const p = createPool(config);
  startLearning(p, { fenceCeiling: 100, horizon: 2000 }, now);
  return p;
}

describe("learning window after a restart", () => {
  it("lasts until the stored horizon plus the clock margin; fences continue from the ceiling", () => {
    const p = restarted();
    expect(p.learning).toEqual({ until: 2000 + CLOCK_MARGIN_MS, relearnBelowFence: 100, relearned: 0 });
    expect(p.nextFence).toBe(100);
    expect(nextWakeAt(p)).toBe(2000 + CLOCK_MARGIN_MS);
    expect(stats(p, 1000).learning).toEqual({ endsInMs: 1000 + CLOCK_MARGIN_MS, relearned: 0 });
  });

  it("has no window when the horizon passed (an idle object evicted) or nothing was stored (a fresh object)", () => {
    const late = createPool(config);
    startLearning(late, { fenceCeiling: 100, horizon: 2000 }, 2000 + CLOCK_MARGIN_MS);
    expect(late.learning).toBeUndefined();
    expect(late.nextFence).toBe(100);
    const fresh = createPool(config);
    startLearning(fresh, null, 0);
    expect(fresh.learning).toBeUndefined();
    expect(stats(fresh, 0).learning).toBeNull();
  });

  it("grants nothing in the window: waitMs 0 is refused, queue: false defers, waiters are granted in order when it ends", () => {
    const p = restarted();
    expect(acquire(p, { leaseId: "now", holder: "x", waitMs: 0 }, 1000).outcome).toMatchObject({
      status: "rejected",
      code: "ACQUIRE_TIMEOUT",
      message:
        "No connection slot free (limit 2, 0 held, 0 waiting, relearning leases after a restart) and the caller would not wait",
    });
    expect(acquire(p, { leaseId: "batch", holder: "x", queue: false }, 1000).outcome).toEqual({ status: "deferred" });
    expect(acquire(p, { leaseId: "w1", holder: "a", waitMs: 5000 }, 1000).outcome.status).toBe("queued");
    expect(acquire(p, { leaseId: "w2", holder: "b", waitMs: 5000 }, 1100).outcome.status).toBe("queued");
    expect(tick(p, 2000 + CLOCK_MARGIN_MS - 1).granted).toEqual([]);
    const fx = tick(p, 2000 + CLOCK_MARGIN_MS);
    expect(fx.granted.map((l) => [l.id, l.fence])).toEqual([
      ["w1", 100],
      ["w2", 101],
    ]);
    expect(p.learning).toBeUndefined();
  });

  it("a renewal of an earlier lease re-registers it against the limit; a release of one answers ok", () => {
    const p = restarted();
    const r = renew(p, { leaseId: "old", fence: 7, expiresAt: 1500 }, 1000, 800).outcome;
    expect(r).toMatchObject({
      status: "ok",
      lease: { id: "old", fence: 7, holder: "relearned", grantedAt: 1000, expiresAt: 1800 },
    });
    expect(stats(p, 1000)).toMatchObject({ held: 1, learning: { relearned: 1 } });
    expect(release(p, { leaseId: "gone", fence: 8 }, 1000).outcome.status).toBe("ok");
    // The relearned lease is an ordinary one now: renewed, released, reaped like any.
    expect(renew(p, { leaseId: "old", fence: 7 }, 1100).outcome).toMatchObject({
      status: "ok",
      lease: { expiresAt: 1100 + 1500 },
    });
    expect(release(p, { leaseId: "old", fence: 7 }, 1200).outcome.status).toBe("ok");
    expect(stats(p, 1200).counters.released).toBe(2);
  });

  it("a renewal cannot invent a lease: not a fence at or above the ceiling, not an expired one, not past the limit, not after the window", () => {
    const p = restarted();
    expect(renew(p, { leaseId: "new", fence: 100 }, 1000).outcome).toMatchObject({
      status: "failed",
      code: "LEASE_NOT_FOUND",
    });
    expect(release(p, { leaseId: "new", fence: 100 }, 1000).outcome).toMatchObject({
      status: "failed",
      code: "LEASE_NOT_FOUND",
    });
    // Its holder was told it expires at 900: a late heartbeat must not bring it back.
    expect(renew(p, { leaseId: "late", fence: 5, expiresAt: 900 }, 1000).outcome).toMatchObject({
      status: "failed",
      code: "LEASE_NOT_FOUND",
    });
    expect(renew(p, { leaseId: "a", fence: 5, expiresAt: 1500 }, 1000).outcome.status).toBe("ok");
    expect(renew(p, { leaseId: "b", fence: 6, expiresAt: 1500 }, 1000).outcome.status).toBe("ok");
    expect(renew(p, { leaseId: "c", fence: 4, expiresAt: 1500 }, 1000).outcome).toMatchObject({
      status: "failed",
      code: "LEASE_NOT_FOUND",
    });
    const after = restarted();
    tick(after, 2000 + CLOCK_MARGIN_MS);
    expect(renew(after, { leaseId: "a", fence: 5, expiresAt: 9000 }, 2000 + CLOCK_MARGIN_MS).outcome).toMatchObject({
      code: "LEASE_NOT_FOUND",
    });
    expect(() => renew(after, { leaseId: "a", fence: 5, expiresAt: "soon" as never }, 2300)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
  });

  it("shows the window in the metrics", () => {
    const p = restarted();
    renew(p, { leaseId: "old", fence: 7, expiresAt: 1500 }, 1000);
    const text = formatMetrics("main", { ...stats(p, 1000), limitOverride: null, reconciliation: null });
    expect(text).toContain(`leasegate_learning_seconds{pool="main"} ${(1000 + CLOCK_MARGIN_MS) / 1000}\n`);
    expect(text).toContain('leasegate_relearned_leases{pool="main"} 1\n');
  });
});

describe("bounds written ahead of need", () => {
  it("reserves fences at start, and the horizon only for what is handed out", () => {
    const p = createPool(config);
    expect(nextBounds(p, { fenceCeiling: 1, horizon: 0 }, [], 0)).toEqual({ fenceCeiling: 1 + FENCE_STEP, horizon: 0 });
    const lease = { id: "a", fence: 1, holder: "", grantedAt: 0, expiresAt: 1500 };
    expect(nextBounds(p, { fenceCeiling: 1 + FENCE_STEP, horizon: 0 }, [lease], 0)).toEqual({
      fenceCeiling: 2 + FENCE_STEP,
      horizon: 1500 + HORIZON_STEP_MS,
    });
  });

  it("is due only within half a step of the last bounds written", () => {
    const p = createPool(config);
    const last = { fenceCeiling: 1 + FENCE_STEP, horizon: 1500 + HORIZON_STEP_MS };
    const at = (expiresAt: number) => [{ id: "a", fence: 2, holder: "", grantedAt: 0, expiresAt }];
    expect(nextBounds(p, last, at(1500 + HORIZON_STEP_MS / 2), 0)).toBeNull();
    expect(nextBounds(p, last, at(1501 + HORIZON_STEP_MS / 2), 1)?.horizon).toBe(1501 + HORIZON_STEP_MS * 1.5);
    p.nextFence = 2 + FENCE_STEP / 2;
    expect(nextBounds(p, last, [], 0)?.fenceCeiling).toBe(2 + FENCE_STEP * 1.5);
  });
});
