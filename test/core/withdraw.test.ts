import { describe, expect, it } from "vitest";
import { acquire, createPool, release, withdraw } from "../../src/core/index.ts";

describe("withdraw", () => {
  it("removes several waiters before any of them can take a freed slot, then grants the next live one", () => {
    const pool = createPool({ limit: 1, maxQueue: 10, waitMs: 1000, leaseTtlMs: 1000 });
    const held = acquire(pool, { leaseId: "held", holder: "" }, 0).outcome;
    for (const id of ["dead1", "dead2", "live"]) acquire(pool, { leaseId: id, holder: "" }, 1);
    if (held.status !== "granted") throw new Error("expected a grant");
    release(pool, { leaseId: "held", fence: held.lease.fence }, 2);
    // dead1 took the slot at the release; the withdrawal takes dead2 and leaves "live" queued.
    expect(pool.leases.has("dead1")).toBe(true);
    const { removed, effects } = withdraw(pool, ["dead2", "unknown"], 3);
    expect(removed).toBe(1);
    expect(effects.granted).toEqual([]);
    expect(pool.queue.map((w) => w.leaseId)).toEqual(["live"]);
    expect(pool.counters.cancelled).toBe(1);
  });

  it("with a slot free at the time (an expired lease), grants past the withdrawn waiters", () => {
    const pool = createPool({ limit: 1, maxQueue: 10, waitMs: 5000, leaseTtlMs: 100 });
    acquire(pool, { leaseId: "held", holder: "" }, 0);
    for (const id of ["dead1", "dead2", "live"]) acquire(pool, { leaseId: id, holder: "" }, 1);
    const { removed, effects } = withdraw(pool, ["dead1", "dead2"], 200);
    expect(removed).toBe(2);
    expect(effects.expired.map((l) => l.id)).toEqual(["held"]);
    expect(effects.granted.map((l) => l.id)).toEqual(["live"]);
    expect(pool.queue).toEqual([]);
  });
});
