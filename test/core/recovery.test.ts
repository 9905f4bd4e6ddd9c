import { describe, expect, it } from "vitest";
import {
  type PoolConfig,
  CLOCK_MARGIN_MS,
  FENCE_STEP,
  HORIZON_STEP_MS,
  type LeaseRef,
  RECOVERED_HOLDER,
  TTL_CAP_FACTOR,
  type VerifyRef,
  acquire,
  boundsLog,
  createPool,
  nextBounds,
  nextWakeAt,
  planBounds,
  release,
  renew,
  revoke,
  startRecovery,
  stats,
  tick,
} from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";

// FIFO: the cases check that waiters are granted in arrival order once the window ends.
const config: PoolConfig = { limit: 2, maxQueue: 5, waitMs: 1000, leaseTtlMs: 1500, queue: "fifo" };
const HORIZON = 2000;
const UNTIL = HORIZON + CLOCK_MARGIN_MS;

/**
 * The core has no crypto: the Durable Object signs with an HMAC (`durable-objects/tokens.ts`,
 * tested in workerd). Here a token is a plain function of (id, fence, expiresAt) that only this
 * "object" issues — what matters to the core is only whether `verify` vouches for a reference.
 */
const tokenOf = (id: string, fence: number, expiresAt: number) => `t.${id}.${fence}.${expiresAt}`;
const verify: VerifyRef = (ref) =>
  ref.expiresAt !== undefined && ref.token === tokenOf(ref.leaseId, ref.fence, ref.expiresAt);
/** A reference as the holder of a lease granted before the restart sends it: told `expiresAt`, with its token. */
const held = (leaseId: string, fence: number, expiresAt: number): LeaseRef => ({
  leaseId,
  fence,
  expiresAt,
  token: tokenOf(leaseId, fence, expiresAt),
});

/** A pool restarted at `now` whose stored bounds say fences below 100 and expiries up to 2000 were handed out. */
function restarted(now = 1000, limit = config.limit) {
  const p = createPool({ ...config, limit });
  startRecovery(p, { fenceCeiling: 100, horizon: HORIZON }, now);
  return p;
}

describe("recovery window after a restart", () => {
  it("lasts until the stored horizon plus the clock margin; fences continue from the ceiling", () => {
    const p = restarted();
    expect(p.recovery).toEqual({
      until: UNTIL,
      horizon: HORIZON,
      recoverBelowFence: 100,
      recovered: 0,
      tombstones: new Set(),
    });
    expect(p.nextFence).toBe(100);
    expect(nextWakeAt(p)).toBe(UNTIL);
    expect(stats(p, 1000).recovery).toEqual({ endsInMs: 1000 + CLOCK_MARGIN_MS, recovered: 0 });
  });

  it("has no window when the horizon passed (an idle object evicted) or nothing was stored (a fresh object)", () => {
    const late = createPool(config);
    startRecovery(late, { fenceCeiling: 100, horizon: HORIZON }, UNTIL);
    expect(late.recovery).toBeUndefined();
    expect(late.nextFence).toBe(100);
    const fresh = createPool(config);
    startRecovery(fresh, null, 0);
    expect(fresh.recovery).toBeUndefined();
    expect(stats(fresh, 0).recovery).toBeNull();
  });

  it("grants nothing in the window: waitMs 0 is refused, queue: false defers, waiters are granted in order when it ends", () => {
    const p = restarted();
    expect(acquire(p, { leaseId: "now", holder: "x", waitMs: 0 }, 1000).outcome).toMatchObject({
      status: "rejected",
      code: "ACQUIRE_TIMEOUT",
      message:
        "No connection slot free (limit 2, 0 held, 0 waiting, in the recovery window after a restart) and the caller would not wait",
    });
    expect(acquire(p, { leaseId: "batch", holder: "x", queue: false }, 1000).outcome).toEqual({ status: "deferred" });
    expect(acquire(p, { leaseId: "w1", holder: "a", waitMs: 5000 }, 1000).outcome.status).toBe("queued");
    expect(acquire(p, { leaseId: "w2", holder: "b", waitMs: 5000 }, 1100).outcome.status).toBe("queued");
    expect(tick(p, UNTIL - 1).granted).toEqual([]);
    const fx = tick(p, UNTIL);
    expect(fx.granted.map((l) => [l.id, l.fence])).toEqual([
      ["w1", 100],
      ["w2", 101],
    ]);
    expect(p.recovery).toBeUndefined();
  });

  it("a verified renewal re-registers an earlier lease with its original expiry; its next renewal is an ordinary one", () => {
    const p = restarted();
    const r = renew(p, held("old", 7, 1500), 1000, 800, verify).outcome;
    expect(r).toEqual({
      status: "ok",
      lease: { id: "old", fence: 7, holder: RECOVERED_HOLDER, grantedAt: 1000, expiresAt: 1500, recovered: true },
    });
    expect(stats(p, 1000)).toMatchObject({ held: 1, recovery: { recovered: 1 } });
    expect(renew(p, held("old", 7, 1500), 1100, undefined, verify).outcome).toMatchObject({
      status: "ok",
      lease: { expiresAt: 1100 + 1500 },
    });
    expect(release(p, held("old", 7, 2600), 1200, verify).outcome.status).toBe("ok");
    expect(stats(p, 1200)).toMatchObject({ held: 0, counters: { released: 1 } });
  });

  it("a recovered lease that is not renewed again expires at its original expiry, not a TTL after its recovery", () => {
    const p = restarted();
    renew(p, held("old", 7, 1300), 1000, 1500, verify);
    expect(tick(p, 1299).expired).toEqual([]);
    expect(tick(p, 1300).expired.map((l) => l.id)).toEqual(["old"]);
    expect(stats(p, 1300).held).toBe(0);
  });

  // Issue #31, item 1 (recovery took back what it could not verify): a renewal of a lease id that was
  // never granted (random id, fence 1, no expiresAt) was accepted: 2 valid leases at limit 1.
  it("hole 1: a renewal of a lease never granted — no token, a forged token, or no expiresAt — is refused, and takes no slot", () => {
    const p = restarted(1000, 1);
    for (const forged of [
      { leaseId: "invented", fence: 1 },
      { leaseId: "invented", fence: 1, expiresAt: 1900 },
      { leaseId: "invented", fence: 1, expiresAt: 1900, token: "t.invented.1.1800" },
      { leaseId: "invented", fence: 1, expiresAt: 1900, token: "x".repeat(22) },
    ]) {
      expect(renew(p, forged, 1000, 1500, verify).outcome).toMatchObject({ status: "failed", code: "LEASE_NOT_FOUND" });
    }
    expect(stats(p, 1000)).toMatchObject({ held: 0, recovery: { recovered: 0 } });
    // The real holder of the one slot keeps it.
    expect(renew(p, held("real", 9, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
    // A backend that cannot verify (none given) recovers nothing.
    const blind = restarted(1000, 1);
    expect(renew(blind, held("real", 9, 1800), 1000).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
  });

  // 2: a renewal without `expiresAt` (or without a token: clients of the previous version during
  // the deploy that restarts the object) revived a lapsed lease whose slot was re-granted.
  it("hole 2: a tokenless renewal (an earlier client version) is not recovered: its holder is told LEASE_NOT_FOUND", () => {
    const p = restarted();
    // b expired before the restart, and its slot went to c: only c may be recovered.
    expect(renew(p, { leaseId: "b", fence: 5 }, 1000, 1500, verify).outcome).toMatchObject({
      status: "failed",
      code: "LEASE_NOT_FOUND",
      message: "No such lease: it was never granted, or is already released or reaped",
    });
    expect(renew(p, { leaseId: "c", fence: 6, expiresAt: 1800 }, 1000, 1500, verify).outcome).toMatchObject({
      code: "LEASE_NOT_FOUND",
    });
    expect(renew(p, held("c", 6, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
    expect(stats(p, 1000).held).toBe(1);
  });

  // 3: a late heartbeat of a lease released (or revoked) inside the window re-registered it.
  it("hole 3: a lease released in the window leaves a tombstone: its late heartbeat does not bring it back", () => {
    const p = restarted(1000, 1);
    // Released before its holder's heartbeat reached the restarted object (unknown here)…
    expect(release(p, held("a", 5, 1800), 1000, verify).outcome.status).toBe("ok");
    // …and the heartbeat sent before the release arrives after it.
    expect(renew(p, held("a", 5, 1800), 1010, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(stats(p, 1010).held).toBe(0);
    // Recovered, then released: the same.
    const q = restarted(1000, 1);
    expect(renew(q, held("b", 6, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
    expect(release(q, held("b", 6, 2500), 1100, verify).outcome.status).toBe("ok");
    expect(renew(q, held("b", 6, 1800), 1110, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(stats(q, 1110).held).toBe(0);
    // A release with a token that does not verify leaves none (garbage cannot fill memory).
    const r = restarted();
    release(r, { leaseId: "junk", fence: 3, expiresAt: 1800, token: "forged" }, 1000, verify);
    expect(r.recovery!.tombstones.size).toBe(0);
    // Tombstones go with the window.
    tick(p, UNTIL);
    expect(p.recovery).toBeUndefined();
  });

  it("hole 3 (revoke): a lease revoked in the window is not renewed, and not recovered again once reaped", () => {
    const p = restarted(1000, 1);
    // Recovered from an older heartbeat (told 1300); its holder was since told 1800.
    expect(renew(p, held("revoked-a", 5, 1300), 1000, 1500, verify).outcome.status).toBe("ok");
    expect(revoke(p, "revoked-a", 1000).lease).toMatchObject({ id: "revoked-a", revoked: true });
    expect(renew(p, held("revoked-a", 5, 1800), 1100, 1500, verify).outcome).toMatchObject({ code: "LEASE_LOST" });
    expect(tick(p, 1300).expired.map((l) => l.id)).toEqual(["revoked-a"]);
    expect(renew(p, held("revoked-a", 5, 1800), 1310, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(stats(p, 1310).held).toBe(0);
  });

  // 4: a new machine whose clock reads 200 ms behind recovered a lease that lapsed 70 ms before.
  it("hole 4: the clock margin guards a new clock that reads behind: a lease within the margin of its expiry is not recovered", () => {
    const p = restarted();
    // Lapsed 70 ms ago by the clock that granted it; this clock reads 200 ms behind that one.
    const now = 1400;
    const expiresAt = now + 200 - 70;
    expect(renew(p, held("lapsed", 5, expiresAt), now, 1500, verify).outcome).toMatchObject({
      code: "LEASE_NOT_FOUND",
    });
    expect(renew(p, held("edge", 6, now + CLOCK_MARGIN_MS), now, 1500, verify).outcome.status).toBe("failed");
    expect(renew(p, held("alive", 7, now + CLOCK_MARGIN_MS + 1), now, 1500, verify).outcome.status).toBe("ok");
  });

  it("leases revoked before the restart (kept by the backend) start as tombstones", () => {
    const p = createPool(config);
    startRecovery(p, { fenceCeiling: 100, horizon: HORIZON }, 1000, ["revoked-a"]);
    expect(renew(p, held("revoked-a", 5, 1800), 1000, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(renew(p, held("other", 6, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
  });

  it("the clock margin guards a new clock that reads ahead: the window lasts the margin past the horizon", () => {
    const p = restarted();
    acquire(p, { leaseId: "w", holder: "w", waitMs: 5000 }, 1000);
    // This clock reads up to the margin ahead: at its horizon + margin - 1, the old holders may run on.
    expect(tick(p, UNTIL - 1).granted).toEqual([]);
    expect(tick(p, UNTIL).granted.map((l) => l.id)).toEqual(["w"]);
  });

  it("an expiry past the stored horizon is not recovered (nothing answered before the restart lies past it)", () => {
    const p = restarted();
    expect(renew(p, held("far", 5, HORIZON + 1), 1000, 1500, verify).outcome).toMatchObject({
      code: "LEASE_NOT_FOUND",
    });
    expect(renew(p, held("near", 6, HORIZON), 1000, 1500, verify).outcome.status).toBe("ok");
  });

  it("recovered leases stay within the limit; not a fence at or above the ceiling; not after the window", () => {
    const p = restarted();
    expect(renew(p, held("new", 100, 1800), 1000, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(release(p, held("new", 100, 1800), 1000, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(renew(p, held("a", 5, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
    expect(renew(p, held("b", 6, 1800), 1000, 1500, verify).outcome.status).toBe("ok");
    expect(renew(p, held("c", 4, 1800), 1000, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    const after = restarted();
    tick(after, UNTIL);
    expect(renew(after, held("a", 5, 9000), UNTIL, 1500, verify).outcome).toMatchObject({ code: "LEASE_NOT_FOUND" });
    expect(() => renew(after, { leaseId: "a", fence: 5, expiresAt: "soon" as never }, 2300)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
    expect(() => renew(after, { leaseId: "a", fence: 5, token: 5 as never }, 2300)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
  });

  it("shows the window in the metrics", () => {
    const p = restarted();
    renew(p, held("old", 7, 1500), 1000, undefined, verify);
    const text = formatMetrics("main", { ...stats(p, 1000), limitOverride: null, reconciliation: null });
    expect(text).toContain(`leasegate_recovery_seconds{pool="main"} ${(1000 + CLOCK_MARGIN_MS) / 1000}\n`);
    expect(text).toContain('leasegate_recovered_leases{pool="main"} 1\n');
  });
});

// Issue #31, 5: one per-call ttlMs of 24 h, released 10 ms later, then a deploy: every acquire was
// refused for the remaining 23 h (the horizon is the longest lifetime ever handed out).
describe("the per-call ttlMs cap bounds how long a restart pauses granting", () => {
  const cap = TTL_CAP_FACTOR * config.leaseTtlMs;

  it(`refuses a ttlMs above ${TTL_CAP_FACTOR} × the pool's TTL on acquire and renew, saying why`, () => {
    const p = createPool(config);
    const message = `Expected \`ttlMs\` to be an integer from 1 to ${cap} (at most ${TTL_CAP_FACTOR} × the pool's leaseTtlMs of 1500 ms), got \`86400000\` (number)`;
    expect(() => acquire(p, { leaseId: "day", holder: "h", ttlMs: 86_400_000 }, 0)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", message }),
    );
    const { outcome } = acquire(p, { leaseId: "max", holder: "h", ttlMs: cap }, 0);
    expect(outcome).toMatchObject({ status: "granted", lease: { expiresAt: cap } });
    expect(() => renew(p, { leaseId: "max", fence: 1 }, 1, 86_400_000)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", message }),
    );
    expect(() => renew(p, { leaseId: "max", fence: 1 }, 1, cap + 1)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
    expect(stats(p, 1).leases[0]!.expiresInMs).toBe(cap - 1);
  });

  it("the longest lease allowed, released, then a restart: granting resumes within cap + horizon step + margin", () => {
    const p = createPool(config);
    const log = boundsLog(null);
    planBounds(log, p, [], 0);
    const { outcome } = acquire(p, { leaseId: "long", holder: "h", ttlMs: cap }, 0);
    if (outcome.status !== "granted") throw new Error("expected a grant");
    // The object writes bounds covering what it hands out before it answers.
    const { write } = planBounds(log, p, [outcome.lease], 0);
    release(p, { leaseId: "long", fence: outcome.lease.fence }, 10);
    const q = createPool(config);
    startRecovery(q, write, 20);
    const bound = cap + HORIZON_STEP_MS + CLOCK_MARGIN_MS;
    expect(q.recovery!.until).toBeLessThanOrEqual(bound);
    acquire(q, { leaseId: "next", holder: "n", waitMs: bound + 1000 }, 20);
    expect(tick(q, bound).granted.map((l) => l.id)).toEqual(["next"]);
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

describe("revoke", () => {
  it("keeps the lease counted until its holder releases it: the queue waits, renewal is LEASE_LOST, release frees at once", () => {
    const p = createPool({ ...config, limit: 1 });
    const { outcome } = acquire(p, { leaseId: "revoked-a", holder: "stuck", ttlMs: 1500 }, 0);
    if (outcome.status !== "granted") throw new Error("expected a grant");
    expect(revoke(p, "revoked-a", 100).lease).toMatchObject({ id: "revoked-a", revoked: true });
    expect(stats(p, 100)).toMatchObject({
      held: 1,
      leases: [{ idPrefix: "revoked-", holder: "stuck", revoked: true }],
    });
    // The next caller waits: the revoked holder's statement may still run.
    expect(acquire(p, { leaseId: "b", holder: "next", waitMs: 5000 }, 100).outcome.status).toBe("queued");
    expect(renew(p, { leaseId: "revoked-a", fence: 1 }, 200).outcome).toEqual({
      status: "failed",
      code: "LEASE_LOST",
      message: "An operator revoked this lease: stop the work that uses its connection, then release it",
    });
    expect(stats(p, 200).leases[0]!.expiresInMs).toBe(1300);
    // Revoking again changes nothing.
    expect(revoke(p, "revoked-a", 250).lease.revoked).toBe(true);
    const { outcome: released, effects } = release(p, { leaseId: "revoked-a", fence: 1 }, 300);
    expect(released.status).toBe("ok");
    expect(effects.granted.map((l) => l.id)).toEqual(["b"]);
  });

  it("a revoked lease whose holder never releases comes back at its expiry, not before", () => {
    const p = createPool({ ...config, limit: 1 });
    acquire(p, { leaseId: "revoked-a", holder: "stuck", ttlMs: 1500 }, 0);
    revoke(p, "revoked-a", 100);
    acquire(p, { leaseId: "b", holder: "next", waitMs: 5000 }, 100);
    expect(tick(p, 1499).granted).toEqual([]);
    const fx = tick(p, 1500);
    expect(fx.expired.map((l) => l.id)).toEqual(["revoked-a"]);
    expect(fx.granted.map((l) => l.id)).toEqual(["b"]);
  });
});

describe("a renewal never shortens a lease", () => {
  it("so an old copy of its grant, with a token for a later expiry, cannot outlive it after a restart", () => {
    const p = createPool({ ...config, limit: 1 });
    const a = acquire(p, { leaseId: "a", holder: "a", ttlMs: 1000 }, 0).outcome;
    if (a.status !== "granted") throw new Error("not granted");
    // A renewal asking for less than is left keeps the later expiry.
    const r = renew(p, { leaseId: "a", fence: a.lease.fence }, 10, 5).outcome;
    expect(r.status === "ok" && r.lease.expiresAt).toBe(1000);
    // At its expiry the slot goes to b; then the object restarts with a horizon past both.
    const b = acquire(p, { leaseId: "b", holder: "b", ttlMs: 1000 }, 1000).outcome;
    expect(b.status).toBe("granted");
    const q = createPool({ ...config, limit: 1 });
    startRecovery(q, { fenceCeiling: 100, horizon: 2000 }, 1001);
    // The first grant's copy (expiry 1000, a token that verifies) has lapsed: not recovered.
    const stale = renew(q, held("a", a.lease.fence, 1000), 1001, undefined, verify).outcome;
    expect(stale.status).toBe("failed");
    expect(stats(q, 1001).held).toBe(0);
  });
});
