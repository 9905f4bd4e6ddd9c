import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Bounds,
  type BoundsLog,
  type Effects,
  type Lease,
  type LeaseRef,
  type PoolState,
  type VerifyRef,
  acquire,
  boundsLog,
  confirmBounds,
  createPool,
  planBounds,
  release,
  renew,
  restore,
  revoke,
  snapshot,
  startRecovery,
  tick,
} from "../../src/core/index.ts";

/**
 * A backend that keeps leases in memory and restarts at random points (the Durable Object's way,
 * `src/core/recovery.ts`), against what its holders really do: some renew, some finish, some die,
 * some wait, some send late or stale heartbeats, clients of an earlier version send no token, an
 * operator revokes, and an attacker forges renewals. After every step, the leases that are really
 * alive — as their holders see them: not released, and not past the expiry they were last told
 * (a holder whose renewal is refused stops at that expiry at the latest, by its own clock) —
 * never exceed the limit, and fences only grow, across any number of restarts. A bounds write is
 * durable only once confirmed; a restart loses the rest. A forged renewal that is accepted makes
 * its sender a holder too: the invariant then counts it.
 */
const RUNS = Number(process.env.LEASEGATE_PROPERTY_RUNS ?? 3_000);

type Op =
  | { kind: "acquire"; waitMs: number; ttlMs: number }
  | { kind: "renew"; pick: number; ttlMs: number }
  | { kind: "release"; pick: number }
  | { kind: "die"; pick: number }
  | { kind: "advance"; ms: number }
  | { kind: "confirm" }
  | { kind: "restart" }
  | { kind: "forge"; variant: number; fence: number; aheadMs: number }
  | { kind: "tokenless"; pick: number }
  | { kind: "stale"; pick: number }
  | { kind: "late"; pick: number }
  | { kind: "revoke"; pick: number };

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
  { arbitrary: fc.constant({ kind: "restart" as const }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant("forge" as const),
      variant: fc.integer({ min: 0, max: 4 }),
      fence: fc.integer({ min: 1, max: 400 }),
      aheadMs: fc.integer({ min: -500, max: 6000 }),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ kind: fc.constant("tokenless" as const), pick: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("stale" as const), pick: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("late" as const), pick: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("revoke" as const), pick: fc.nat() }), weight: 1 },
);

/** The object's tokens (a MAC in the Durable Object; any function only the object computes here). */
const tokenOf = (id: string, fence: number, expiresAt: number) => `mac(${id},${fence},${expiresAt})`;
const verify: VerifyRef = (ref) =>
  ref.expiresAt !== undefined && ref.token === tokenOf(ref.leaseId, ref.fence, ref.expiresAt);

/** A holder as it sees itself: the lease it was last told about, and whether it still works. */
interface Holder {
  id: string;
  fence: number;
  /** The expiry in the last answer it received: it may use its connection until then. */
  expiresAt: number;
  /** Every expiry it was told, oldest first: a stale heartbeat sends an older one (with its token). */
  told: number[];
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
    startRecovery(this.pool, this.stored, now);
    this.log = boundsLog(this.stored);
    this.start(now);
  }
}

let checked = 0;
let restarts = 0;
let recoveredTotal = 0;
let refusedInWindow = 0;

describe("restarts with leases in memory (recovery window)", () => {
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
          holders.push({
            id: l.id,
            fence: l.fence,
            expiresAt: l.expiresAt,
            told: [l.expiresAt],
            released: false,
            dead: false,
          });
        };
        /** What a holder sends: the expiry it names and the token that came with it (none: an earlier client). */
        const refOf = (h: Holder, expiresAt: number, token = true): LeaseRef => ({
          leaseId: h.id,
          fence: h.fence,
          expiresAt,
          ...(token ? { token: tokenOf(h.id, h.fence, expiresAt) } : {}),
        });
        /** A renewal from `h` naming `expiresAt`: an answer extends what the holder may use; a refusal stops it at its expiry. */
        const heartbeat = (h: Holder, ref: LeaseRef, ttlMs: number): void => {
          const inWindow = b.pool.recovery !== undefined;
          const before = b.pool.recovery?.recovered ?? 0;
          const { outcome, effects } = renew(b.pool, ref, now, ttlMs, verify);
          if (b.pool.recovery && b.pool.recovery.recovered > before) recoveredTotal++;
          apply(effects);
          if (outcome.status === "ok") {
            b.handOut([outcome.lease], now);
            // The holder goes by its latest answer (as the client's heartbeat does), also when it names an
            // earlier expiry (a stale heartbeat's recovery keeps the expiry that heartbeat named).
            h.expiresAt = outcome.lease.expiresAt;
            h.told.push(outcome.lease.expiresAt);
          } else {
            if (inWindow) refusedInWindow++;
            // The holder hears its lease is gone; it stops calling, and may use its connection
            // until the expiry it was last told (its own clock stops it there at the latest).
            h.dead = true;
          }
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
              const id = `lease-${String(seq++).padStart(4, "0")}`;
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
              heartbeat(h, refOf(h, h.expiresAt), o.ttlMs);
              break;
            }
            case "tokenless": {
              // A client of the previous version (no token) heartbeats through a deploy.
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length === 0) break;
              const h = live[o.pick % live.length]!;
              heartbeat(h, refOf(h, h.expiresAt, false), config.leaseTtlMs);
              break;
            }
            case "stale": {
              // A heartbeat delayed in flight: it names an expiry the holder was told earlier.
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length === 0) break;
              const h = live[o.pick % live.length]!;
              heartbeat(h, refOf(h, h.told[0]!), config.leaseTtlMs);
              break;
            }
            case "late": {
              // A heartbeat sent before its holder's release arrives after it: whatever it is
              // answered, the holder is done (a phantom would take a slot, never a connection).
              const done = holders.filter((h) => h.released);
              if (done.length === 0) break;
              const h = done[o.pick % done.length]!;
              const inWindow = b.pool.recovery !== undefined;
              const { outcome, effects } = renew(b.pool, refOf(h, h.told.at(-1)!), now, config.leaseTtlMs, verify);
              apply(effects);
              if (outcome.status === "ok") b.handOut([outcome.lease], now);
              else if (inWindow) refusedInWindow++;
              break;
            }
            case "forge": {
              // Someone who never held the lease: an invented id or a fence from before the
              // restart, with no token, a made-up one, a token of another expiry, or no expiry.
              const id = `forged${seq++}`;
              const expiresAt = now + o.aheadMs;
              const refs: LeaseRef[] = [
                { leaseId: id, fence: o.fence },
                { leaseId: id, fence: o.fence, expiresAt },
                { leaseId: id, fence: o.fence, expiresAt, token: "A".repeat(22) },
                { leaseId: id, fence: o.fence, expiresAt, token: tokenOf(id, o.fence, expiresAt - 1) },
                { leaseId: id, fence: o.fence + 1, expiresAt, token: tokenOf(id, o.fence, expiresAt) },
              ];
              if (b.pool.recovery) refusedInWindow++;
              const { outcome, effects } = renew(b.pool, refs[o.variant]!, now, config.leaseTtlMs, verify);
              apply(effects);
              expect(outcome.status).toBe("failed");
              break;
            }
            case "revoke": {
              const known = [...b.pool.leases.values()];
              if (known.length === 0) break;
              const l = known[o.pick % known.length]!;
              apply(revoke(b.pool, l.id, now).effects);
              break;
            }
            case "release": {
              const live = holders.filter((h) => !h.released && !h.dead);
              if (live.length === 0) break;
              const h = live[o.pick % live.length]!;
              h.released = true;
              apply(release(b.pool, refOf(h, h.expiresAt), now, verify).effects);
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
    // The sequences must reach the interesting part: leases recovered, and renewals refused, in windows.
    expect(restarts).toBeGreaterThan(RUNS / 2);
    expect(recoveredTotal).toBeGreaterThan(RUNS / 10);
    expect(refusedInWindow).toBeGreaterThan(RUNS / 10);
    console.log(
      `[reliability] restarts model: ${RUNS} sequences, ${checked} steps checked, ${restarts} restarts, ${recoveredTotal} leases recovered, ${refusedInWindow} renewals refused in a window (forged, tokenless, stale, late)`,
    );
  });
});
