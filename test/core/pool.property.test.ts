import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Effects,
  type Lease,
  type PoolState,
  acquire,
  cancel,
  createPool,
  release,
  renew,
  stats,
  tick,
} from "../../src/core/index.ts";

/**
 * Generated interleavings of every operation against the pure core, with invariants checked after
 * each step. The run count is the figure the README's "Reliability" section quotes.
 */
const PROPERTY_RUNS = Number(process.env.LEASEGATE_PROPERTY_RUNS ?? 10_000);

type Op =
  | { kind: "acquire"; waitMs: number; ttlMs: number }
  | { kind: "release"; pick: number; stale: boolean }
  | { kind: "renew"; pick: number; ttlMs: number }
  | { kind: "cancel"; pick: number }
  | { kind: "crash"; pick: number }
  | { kind: "advance"; ms: number }
  | { kind: "jumpBack"; ms: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("acquire" as const),
    waitMs: fc.integer({ min: 0, max: 500 }),
    ttlMs: fc.integer({ min: 1, max: 2000 }),
  }),
  fc.record({ kind: fc.constant("release" as const), pick: fc.nat(), stale: fc.boolean() }),
  fc.record({ kind: fc.constant("renew" as const), pick: fc.nat(), ttlMs: fc.integer({ min: 1, max: 2000 }) }),
  fc.record({ kind: fc.constant("cancel" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("crash" as const), pick: fc.nat() }),
  fc.record({
    kind: fc.constant("advance" as const),
    ms: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 5000 })),
  }),
  // The shell's clock stepping backwards (an NTP correction, a move to another machine).
  fc.record({ kind: fc.constant("jumpBack" as const), ms: fc.integer({ min: 1, max: 3000 }) }),
);

function checkInvariants(p: PoolState, now: number, fx: Effects): void {
  // held ≤ limit, always.
  expect(p.leases.size).toBeLessThanOrEqual(p.config.limit);
  // No slot lost: nobody waits while a slot is free.
  if (p.queue.length > 0) expect(p.leases.size).toBe(p.config.limit);
  // Nothing queued past its deadline, nothing held past its expiry (crashed holders' leases are
  // reaped by time alone), and nobody timed out before its deadline.
  for (const w of p.queue) expect(w.deadline).toBeGreaterThan(now);
  for (const l of p.leases.values()) expect(l.expiresAt).toBeGreaterThan(now);
  for (const w of fx.timedOut) expect(w.deadline).toBeLessThanOrEqual(now);
}

let steps = 0;

describe("core under generated interleavings", () => {
  it(`keeps its invariants over ${PROPERTY_RUNS} generated sequences`, { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 6 }),
        fc.array(op, { minLength: 5, maxLength: 60 }),
        (limit, maxQueue, ops) => {
          const p = createPool({ limit, maxQueue, waitMs: 200, leaseTtlMs: 1000 });
          let now = 0;
          let latest = 0;
          let seq = 0;
          const held: Lease[] = [];
          const crashed = new Set<string>();
          // Queue order as the client saw it: an id enters at enqueue, leaves at grant/timeout/cancel.
          const queued: string[] = [];

          const apply = (fx: Effects): void => {
            // Time-outs happen before freed slots are filled, so settle them first.
            for (const w of fx.timedOut) queued.splice(queued.indexOf(w.leaseId), 1);
            for (const l of fx.granted) {
              // The granted waiter must be the oldest still queued.
              expect(queued.shift()).toBe(l.id);
              expect(l.grantedAt).toBeLessThanOrEqual(now);
              held.push(l);
            }
            for (const l of fx.expired)
              held.splice(
                held.findIndex((h) => h.id === l.id),
                1,
              );
            checkInvariants(p, now, fx);
          };

          for (const o of ops) {
            steps++;
            switch (o.kind) {
              case "acquire": {
                const id = `l${seq++}`;
                const { outcome, effects } = acquire(
                  p,
                  { leaseId: id, holder: "h", waitMs: o.waitMs, ttlMs: o.ttlMs },
                  now,
                );
                apply(effects);
                if (outcome.status === "granted") held.push(outcome.lease);
                if (outcome.status === "queued") {
                  expect(outcome.deadline).toBe(now + o.waitMs);
                  queued.push(id);
                }
                if (outcome.status === "rejected" && outcome.code === "QUEUE_FULL")
                  expect(p.queue.length).toBe(maxQueue);
                break;
              }
              case "release": {
                const live = held.filter((l) => !crashed.has(l.id));
                if (live.length === 0) break;
                const l = live[o.pick % live.length]!;
                const before = stats(p, now);
                const fence = o.stale ? l.fence + 1 : l.fence;
                const { outcome, effects } = release(p, { leaseId: l.id, fence }, now);
                if (o.stale) {
                  // A stale fence frees nothing: the only changes are what time alone does.
                  expect(outcome.status).toBe("failed");
                  if (effects.expired.length === 0 && effects.timedOut.length === 0) {
                    expect(stats(p, now).held).toBe(before.held);
                    expect(stats(p, now).counters.released).toBe(before.counters.released);
                  }
                } else if (outcome.status === "ok") {
                  held.splice(held.indexOf(l), 1);
                  // A second release of the same lease changes nothing.
                  const again = release(p, { leaseId: l.id, fence: l.fence }, now);
                  expect(again.outcome.status).toBe("failed");
                  expect(again.effects.granted).toHaveLength(0);
                }
                apply(effects);
                break;
              }
              case "renew": {
                const live = held.filter((l) => !crashed.has(l.id));
                if (live.length === 0) break;
                const l = live[o.pick % live.length]!;
                const before = p.leases.get(l.id)?.expiresAt ?? -Infinity;
                const { outcome, effects } = renew(p, { leaseId: l.id, fence: l.fence }, now, o.ttlMs);
                // Extended to now + ttl, never shortened.
                if (outcome.status === "ok") expect(outcome.lease.expiresAt).toBe(Math.max(before, now + o.ttlMs));
                apply(effects);
                break;
              }
              case "cancel": {
                if (queued.length === 0) break;
                const id = queued[o.pick % queued.length]!;
                const { removed, effects } = cancel(p, id, now);
                expect(removed).toBe(true);
                queued.splice(queued.indexOf(id), 1);
                apply(effects);
                break;
              }
              case "crash": {
                // The holder dies: it never calls again; only expiry can return its slot.
                if (held.length > 0) crashed.add(held[o.pick % held.length]!.id);
                break;
              }
              case "advance": {
                now += o.ms;
                latest = Math.max(latest, now);
                apply(tick(p, now));
                break;
              }
              case "jumpBack": {
                // Nothing may be granted, freed twice or lost when time runs backwards; deadlines and
                // expiries simply come later by the same amount.
                now -= o.ms;
                const fx = tick(p, now);
                expect(fx.expired).toHaveLength(0);
                expect(fx.timedOut).toHaveLength(0);
                apply(fx);
                break;
              }
            }
            expect(p.leases.size).toBe(held.length);
            expect(p.queue.map((w) => w.leaseId)).toEqual(queued);
          }
          // Let time run out: every crashed holder's slot comes back, every waiter is settled
          // (past anything granted before the clock stepped back, too).
          now = Math.max(now, latest) + 10_000;
          apply(tick(p, now));
          expect(p.leases.size).toBe(0);
          expect(p.queue).toHaveLength(0);
          const c = p.counters;
          expect(c.granted).toBe(c.released + c.expired);
        },
      ),
      {
        numRuns: PROPERTY_RUNS,
        ...(process.env.LEASEGATE_PROPERTY_SEED ? { seed: Number(process.env.LEASEGATE_PROPERTY_SEED) } : {}),
      },
    );
    console.log(
      `[reliability] core model: ${PROPERTY_RUNS} sequences, ${steps} operations checked (shrinking included)`,
    );
  });
});
