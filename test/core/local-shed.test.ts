import { describe, expect, it } from "vitest";
import { LOCAL_SHED, LocalShed } from "../../src/client/local-shed.ts";
import { DEFAULT_LOCAL_SHED_RATIO, localShedFromEnv, poolSettings } from "../../src/core/config.ts";
import type { AcquireOptions, AcquireResult, LeaseGrant } from "../../src/core/index.ts";
import { isLeaseError } from "../../src/core/index.ts";

// The isolate's local shed (client-side adaptive throttling of acquires) on a clock and a
// randomness the test drives.

const lease = { leaseId: "a", fence: 1, grantedAt: 0, expiresAt: 1 } as unknown as LeaseGrant;
const granted: AcquireResult = { ok: true, lease };
const full: AcquireResult = { ok: false, code: "QUEUE_FULL", message: "Wait queue is full", retryAfterMs: 340 };

function shedAt(clock: { now: number }, random = () => 0) {
  return new LocalShed(LOCAL_SHED, { now: () => clock.now, random });
}

/** `n` answers of the coordinator to `request`: `grants` of them granted, the rest refused. */
function answer(shed: LocalShed, request: AcquireOptions, n: number, grants: number): void {
  for (let i = 0; i < n; i++) shed.answered(request, i < grants ? granted : full);
}

describe("LocalShed", () => {
  const request: AcquireOptions = { waitMs: 2000 };

  it("sheds nothing until the window holds enough answers, then refuses with QUEUE_FULL and the coordinator's Retry-After", () => {
    const clock = { now: 10_000 };
    const shed = shedAt(clock);
    answer(shed, request, LOCAL_SHED.minRequests - 1, 0);
    expect(shed.refuse(request)).toBeUndefined();
    answer(shed, request, 1, 0);
    const refusal = shed.refuse(request);
    expect(isLeaseError(refusal) && refusal.code).toBe("QUEUE_FULL");
    expect(refusal?.retryAfterMs).toBe(340);
    expect(refusal?.message).toMatch(
      /^Shed in this isolate without a coordinator call: the coordinator granted 0 of the last 20/,
    );
    expect(shed.shed).toBe(1);
  });

  it("answers with the code of the coordinator's last refusal: a hopeless wait is ACQUIRE_TIMEOUT", () => {
    const clock = { now: 10_000 };
    const shed = shedAt(clock);
    answer(shed, request, 30, 0);
    const hopeless: AcquireResult = { ok: false, code: "ACQUIRE_TIMEOUT", message: "hopeless", retryAfterMs: 2600 };
    shed.answered(request, hopeless);
    const refusal = shed.refuse(request);
    expect(refusal?.code).toBe("ACQUIRE_TIMEOUT");
    expect(refusal?.retryAfterMs).toBe(2600);
  });

  it("refuses with max(0, (requests − K·grants) / (requests + 1))", () => {
    const clock = { now: 10_000 };
    const K = LOCAL_SHED.ratio;
    // 100 answers, 30 grants: chance (100 − 30K) / 101.
    let draw = 0;
    const shed = shedAt(clock, () => draw);
    answer(shed, request, 100, 30);
    const chance = (100 - K * 30) / 101;
    draw = chance - 1e-9;
    expect(shed.refuse(request)).toBeDefined();
    // The refusal counted as a request: the chance is now (101 − 30K) / 102, a little higher.
    draw = (101 - K * 30) / 102 - 1e-9;
    expect(draw).toBeGreaterThan(chance);
    expect(shed.refuse(request)).toBeDefined();
    draw = (102 - K * 30) / 103 + 1e-9;
    expect(shed.refuse(request)).toBeUndefined();
    // Grants above 1/K of the answers: never.
    const healthy = shedAt(clock, () => 0);
    answer(healthy, request, 100, Math.ceil(100 / K));
    expect(healthy.refuse(request)).toBeUndefined();
  });

  it("stops shedding once the coordinator's last refusal is a window old", () => {
    const clock = { now: 10_000 };
    const shed = shedAt(clock);
    answer(shed, request, 40, 0);
    // Local refusals alone keep the window full of requests: they do not keep the shed going.
    clock.now += LOCAL_SHED.windowMs / 2;
    for (let i = 0; i < 40; i++) expect(shed.refuse(request)).toBeDefined();
    clock.now += LOCAL_SHED.windowMs / 2;
    expect(shed.refuse(request)).toBeDefined();
    clock.now += 1;
    expect(shed.refuse(request)).toBeUndefined();
  });

  it("keeps priorities and tenants apart, and never sheds a request that would not wait", () => {
    const clock = { now: 10_000 };
    const shed = shedAt(clock);
    answer(shed, { waitMs: 2000, tenant: "a" }, 40, 0);
    expect(shed.refuse({ waitMs: 2000, tenant: "a" })).toBeDefined();
    expect(shed.refuse({ waitMs: 2000, tenant: "b" })).toBeUndefined();
    expect(shed.refuse({ waitMs: 2000, tenant: "a", priority: "critical" })).toBeUndefined();
    expect(shed.refuse({ waitMs: 0, tenant: "a" })).toBeUndefined();
    // Other answers (an invalid request, say) say nothing of overload.
    const other = shedAt(clock);
    const invalid: AcquireResult = { ok: false, code: "INVALID_ARGUMENT", message: "bad" };
    for (let i = 0; i < 40; i++) other.answered(request, invalid);
    expect(other.refuse(request)).toBeUndefined();
  });

  it("under a standing overload sends the coordinator about K times what it grants, and it stays busy", () => {
    // 10 s of 10 ms steps: 30 acquires offered per step to a coordinator that serves 3 per step
    // from a queue of 40 (the rest refused). Randomness seeded.
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const clock = { now: 0 };
    const shed = shedAt(clock, random);
    let queue = 0;
    let sent = 0;
    let served = 0;
    let idleSteps = 0;
    const steps = 1000;
    for (let step = 0; step < steps; step++) {
      clock.now = step * 10;
      for (let i = 0; i < 30; i++) {
        if (shed.refuse(request)) continue;
        sent++;
        if (queue < 40) {
          queue++;
          shed.answered(request, granted);
        } else shed.answered(request, full);
      }
      const serve = Math.min(3, queue);
      if (serve < 3) idleSteps++;
      queue -= serve;
      served += serve;
    }
    const perStep = sent / steps;
    console.log(
      `local shed simulation: ${perStep.toFixed(2)} sent per step for 3 served, ${idleSteps} steps with a slot idle`,
    );
    // Without the shed it would receive 30 per step.
    expect(perStep).toBeGreaterThan(3 * LOCAL_SHED.ratio * 0.9);
    expect(perStep).toBeLessThan(3 * LOCAL_SHED.ratio * 1.3);
    expect(served).toBeGreaterThanOrEqual(0.99 * 3 * steps);
    expect(idleSteps).toBeLessThanOrEqual(10);
  });
});

describe("LEASE_LOCAL_SHED", () => {
  it("is on (K = the default) unless set; off; or a ratio from 1 to 10", () => {
    expect(localShedFromEnv(undefined)).toBe(DEFAULT_LOCAL_SHED_RATIO);
    expect(localShedFromEnv("on")).toBe(DEFAULT_LOCAL_SHED_RATIO);
    expect(localShedFromEnv("off")).toBe(false);
    expect(localShedFromEnv("1.5")).toBe(1.5);
    expect(poolSettings({ LEASE_LIMIT: "5", LEASE_LOCAL_SHED: "3" }).localShed).toBe(3);
    for (const bad of ["0.5", "11", "yes", "2x", "-1"]) {
      expect(() => localShedFromEnv(bad)).toThrow(/LEASE_LOCAL_SHED.*`on`, `off` or a ratio from 1 to 10/);
    }
  });
});
