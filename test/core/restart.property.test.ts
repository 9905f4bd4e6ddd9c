import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Bounds,
  type BoundsLog,
  type Effects,
  type Lease,
  type PoolState,
  acquire,
  boundsLog,
  confirmBounds,
  createPool,
  planBounds,
  release,
  renew,
  restore,
  snapshot,
  startLearning,
  tick,
} from "../../src/core/index.ts";

/**
 * A backend that keeps leases in memory and restarts at random points (the Durable Object's way,
 * `src/core/learning.ts`), against what its holders really do: some renew, some finish, some die,
 * some wait. After every step, the leases that are really alive — not released, and not past the
 * expiry their holder was last told — never exceed the limit, and fences only grow, across any
 * number of restarts. A bounds write is durable only once confirmed; a restart loses the rest.
 */
const RUNS = Number(process.env.LEASEGATE_PROPERTY_RUNS ?? 3_000);

type Op =
  | { kind: "acquire"; waitMs: number; ttlMs: number }
  | { kind: "renew"; pick: number; ttlMs: number }
  | { kind: "release"; pick: number }
  | { kind: "die"; pick: number }
  | { kind: "advance"; ms: number }
  | { kind: "confirm" }
  | { kind: "restart" };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant("acquire" as const),
      waitMs: fc.integer({ min: 0, max: 3000 }),
      ttlMs: fc.integer({ min: 1, max: 5000 }),
    }),
    weight: 5,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("renew" as const),
      pick: fc.nat(),
      ttlMs: fc.integer({ min: 1, max: 5000 }),
    }),
    weight: 4,
  },
  { arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("die" as const), pick: fc.nat() }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant("advance" as const),
      ms: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 6000 })),
    }),
    weight: 4,
  },
  { arbitrary: fc.constant({ kind: "confirm" as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: "restart" as const }), weight: 1 },
);

/** A holder as it sees itself: the lease it was last told about, and whether it still works. */
interface Holder {
  id: string;
  fence: number;
  /** The expiry in the last answer it received: it may use its connection until then. */
  expiresAt: number;
  released: boolean;
  /** Dead holders stop calling, but may be counted as using their connection until `expiresAt`. */
  dead: boolean;
}

/** The backend: a pool in memory, stored bounds and snapshot, and the writes not yet durable. */
class Backend {
  pool: PoolState;
  log: BoundsLog;
  stored: Bounds | null = null;
  /** Written in the background, lost if the backend restarts before they are confirmed. */
  unconfirmed: Bounds[] = [];
  readonly config: { limit: number; maxQueue: number; waitMs: number; leaseTtlMs: number };
  constructor(config: { limit: number; maxQueue: number; waitMs: number; leaseTtlMs: number }, now: number) {
    this.config = config;
    this.pool = createPool(config);
    this.log = boundsLog(null);
    this.start(now);
  }

  private start(now: number): void {
    // At start (before any call) the first fences are written and made durable.
    const { write } = planBounds(this.log, this.pool, [], now);
    if (write) this.durable(write);
  }

  private durable(b: Bounds): void {
    this.stored = b;
    confirmBounds(this.log, b);
    this.unconfirmed = [];
  }

  confirm(): void {
    const last = this.unconfirmed.at(-1);
    if (last) this.durable(last);
  }

  /** Answers that hand out `handed` leave at once if covered; else after the writes are durable. */
  handOut(handed: Lease[], now: number): void {
    const { write, wait } = planBounds(this.log, this.pool, handed, now);
    if (write) this.unconfirmed.push(write);
    if (wait) this.confirm();
  }

  restart(now: number): void {
    this.unconfirmed = [];
    this.pool = restore(this.config, snapshot(this.pool), []);
    startLearning(this.pool, this.stored, now);
    this.log = boundsLog(this.stored);
    this.start(now);
  }
}

let checked = 0;
let restarts = 0;
let relearnedTotal = 0;

describe("restarts with leases in memory (learning window)", () => {
  it(`never lets the leases really alive exceed the limit, and fences only grow, over ${RUNS} sequences`, {
    timeout: 120_000,
  }, () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.array(op, { minLength: 5, maxLength: 80 }), (limit, ops) => {
        const config = { limit, maxQueue: 4, waitMs: 1000, leaseTtlMs: 1500 };
        let now = 1_000_000;
        const b = new Backend(config, now);
        let seq = 0;
        let maxFence = 0;
        const holders: Holder[] = [];
        /** Queued callers (waiting for a grant): their ids. */
        let waiting: string[] = [];

        const granted = (l: Lease): void => {
          // Fences only grow, across restarts too.
          expect(l.fence).toBeGreaterThan(maxFence);
          maxFence = l.fence;
          holders.push({ id: l.id, fence: l.fence, expiresAt: l.expiresAt, released: false, dead: false });
        };
        const apply = (fx: Effects): void => {
          b.handOut(fx.granted, now);
          for (const l of fx.granted) {
            waiting = waiting.filter((id) => id !== l.id);
            granted(l);
          }
          for (const w of fx.timedOut) waiting = waiting.filter((id) => id !== w.leaseId);
        };
        const check = (): void => {
          const alive = holders.filter((h) => !h.released && now < h.expiresAt);
          expect(alive.length).toBeLessThanOrEqual(limit);
          checked++;
        };

        for (const o of ops) {
          switch (o.kind) {
            case "acquire": {
              const id = `l${seq++}`;
              const { outcome, effects } = acquire(
                b.pool,
                { leaseId: id, holder: "h", waitMs: o.waitMs, ttlMs: o.ttlMs },
                now,
              );
              apply(effects);
              if (outcome.status === "granted") {
                b.handOut([outcome.lease], now);
                granted(outcome.lease);
              } else if (outcome.status === "queued") waiting.push(id);
              break;
            }
            case "renew": {
              // Heartbeats may come late: a holder whose lease expired may still send one.
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length === 0) break;
              const h = live[o.pick % live.length]!;
              const { outcome, effects } = renew(
                b.pool,
                { leaseId: h.id, fence: h.fence, expiresAt: h.expiresAt },
                now,
                o.ttlMs,
              );
              apply(effects);
              if (outcome.status === "ok") {
                if (outcome.lease.relearned) relearnedTotal++;
                b.handOut([outcome.lease], now);
                h.expiresAt = outcome.lease.expiresAt;
              } else {
                // The holder hears its lease is gone and stops using the connection.
                h.released = true;
              }
              break;
            }
            case "release": {
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length === 0) break;
              const h = live[o.pick % live.length]!;
              h.released = true;
              apply(release(b.pool, { leaseId: h.id, fence: h.fence }, now).effects);
              break;
            }
            case "die": {
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length > 0) live[o.pick % live.length]!.dead = true;
              break;
            }
            case "advance": {
              now += o.ms;
              apply(tick(b.pool, now));
              break;
            }
            case "confirm": {
              b.confirm();
              break;
            }
            case "restart": {
              restarts++;
              // Queued callers get an error and go away; holders keep working and renewing.
              waiting = [];
              b.restart(now);
              break;
            }
          }
          check();
        }
        expect(waiting.every((id) => b.pool.queue.some((w) => w.leaseId === id))).toBe(true);
      }),
      {
        numRuns: RUNS,
        ...(process.env.LEASEGATE_PROPERTY_SEED ? { seed: Number(process.env.LEASEGATE_PROPERTY_SEED) } : {}),
      },
    );
    // The sequences must reach the interesting part: leases relearned after restarts.
    expect(restarts).toBeGreaterThan(RUNS / 2);
    expect(relearnedTotal).toBeGreaterThan(RUNS / 10);
    console.log(
      `[reliability] restarts model: ${RUNS} sequences, ${checked} steps checked, ${restarts} restarts, ${relearnedTotal} leases relearned`,
    );
  });
});
