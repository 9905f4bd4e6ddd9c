import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Effects,
  type Lease,
  type PoolState,
  type Priority,
  type QueueMode,
  PRIORITIES,
  QUEUE_INTERVAL_MS,
  QUEUE_TARGET_MS,
  SHED_MARGIN,
  SHED_MAX_EARLY_SHARE,
  SHED_MIN_SAMPLES,
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
  | { kind: "acquire"; waitMs: number; ttlMs: number; priority: Priority | undefined; tenant: string | undefined }
  | { kind: "release"; pick: number; stale: boolean }
  | { kind: "renew"; pick: number; ttlMs: number }
  | { kind: "cancel"; pick: number }
  | { kind: "crash"; pick: number }
  | { kind: "advance"; ms: number }
  /** Time passes and every live holder of at least `holdMs` finishes: steady service, which the wait prediction learns. */
  | { kind: "work"; ms: number; holdMs: number }
  | { kind: "jumpBack"; ms: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("acquire" as const),
    waitMs: fc.integer({ min: 0, max: 500 }),
    ttlMs: fc.integer({ min: 1, max: 2000 }),
    // Mostly plain callers (the FIFO/LIFO head-or-tail path), sometimes classes and tenants.
    priority: fc.oneof({ weight: 8, arbitrary: fc.constant(undefined) }, fc.constantFrom(...PRIORITIES)),
    tenant: fc.oneof({ weight: 8, arbitrary: fc.constant(undefined) }, fc.constantFrom("a", "b")),
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

/**
 * A crowded pool: callers that wait long enough, and leases that live long enough, for a queue to
 * stand past the target and the interval, so the adaptive mode's newest-first is reached often
 * (the generator above, which favours small numbers, reaches it a few times in 10,000 sequences).
 */
const crowdedOp: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("acquire" as const),
      waitMs: fc.integer({ min: 100, max: 1000 }),
      ttlMs: fc.integer({ min: 200, max: 2000 }),
      priority: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, fc.constantFrom(...PRIORITIES)),
      tenant: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, fc.constantFrom("a", "b")),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat(), stale: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("cancel" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("crash" as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("advance" as const), ms: fc.integer({ min: 10, max: 80 }) }) },
);

/**
 * A busy pool over a long run: enough waiters granted from the queue for the wait prediction to be
 * trusted, then callers with deadlines short and long next to it, so some are told at once.
 */
const sheddingOp: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 11,
    arbitrary: fc.record({
      kind: fc.constant("acquire" as const),
      waitMs: fc.oneof(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 60, max: 660 })),
      ttlMs: fc.integer({ min: 500, max: 2000 }),
      priority: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, fc.constantFrom(...PRIORITIES)),
      tenant: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, fc.constantFrom("a", "b")),
    }),
  },
  {
    weight: 9,
    arbitrary: fc.record({
      kind: fc.constant("work" as const),
      ms: fc.integer({ min: 2, max: 10 }),
      holdMs: fc.integer({ min: 15, max: 25 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("cancel" as const), pick: fc.nat() }) },
);

function checkInvariants(p: PoolState, now: number, fx: Effects): void {
  // held ≤ limit, always.
  expect(p.leases.size).toBeLessThanOrEqual(p.config.limit);
  // No slot lost: nobody waits while a slot is free.
  if (p.queue.length > 0) expect(p.leases.size).toBe(p.config.limit);
  // Nothing queued past its deadline, nothing held past its expiry (crashed holders' leases are
  // reaped by time alone), and nobody timed out before its deadline (a hopeless waiter told early
  // is answered as if its deadline were now).
  for (const w of p.queue) expect(w.deadline).toBeGreaterThan(now);
  for (const l of p.leases.values()) expect(l.expiresAt).toBeGreaterThan(now);
  for (const w of fx.timedOut) expect(w.deadline).toBeLessThanOrEqual(now);
}

let steps = 0;
/** Callers told at once that their predicted wait was hopeless, over all sequences. */
let sheds = 0;

/** Runs one generated sequence against the core and the model, checking the invariants after each step. */
function sequence(limit: number, maxQueue: number, ops: Op[], mode: QueueMode): number {
  let lifoGrants = 0;
  const p = createPool({ limit, maxQueue, waitMs: 200, leaseTtlMs: 1000, queue: mode });
  let now = 0;
  let latest = 0;
  let seq = 0;
  let lastFence = 0;
  const held: Lease[] = [];
  const crashed = new Set<string>();
  // Queue order as the client saw it: an id enters at enqueue, leaves at grant/timeout/cancel.
  const queued: string[] = [];
  const asked = new Map<string, { at: number; deadline: number; rank: number; tenant: string }>();
  // The model's own record of the tenants' turns and of the standing queue (the documented rules).
  const turns = new Map<string, number>();
  let turn = 0;
  let since: number | null = null;
  let lifo = false;
  const observe = () => {
    // The oldest by the clock (after the clock stepped back, not always the first to arrive).
    const oldest = queued.length === 0 ? undefined : Math.min(...queued.map((id) => asked.get(id)!.at));
    if (mode === "fifo" || oldest === undefined || now - oldest <= QUEUE_TARGET_MS) {
      since = null;
      lifo = false;
    } else {
      since ??= oldest + QUEUE_TARGET_MS;
      if (now - since >= QUEUE_INTERVAL_MS) lifo = true;
    }
  };
  const fence = (l: Lease) => {
    // Fences only grow.
    expect(l.fence).toBeGreaterThan(lastFence);
    lastFence = l.fence;
  };

  const apply = (fx: Effects): void => {
    // Time-outs happen before freed slots are filled, so settle them first.
    const early = fx.timedOut.filter((w) => asked.get(w.leaseId)!.deadline > now);
    for (const w of fx.timedOut) if (!early.includes(w)) queued.splice(queued.indexOf(w.leaseId), 1);
    observe();
    // Waiters told before their deadline: only under newest-first (as just decided), in a plain
    // queue, the oldest first, each hopeless behind every newer waiter at the pool's recent hold time.
    if (early.length > 0) {
      expect(lifo).toBe(true);
      expect(p.prediction.holds).toBeGreaterThanOrEqual(SHED_MIN_SAMPLES);
      expect(queued.every((id) => asked.get(id)!.rank === 1 && asked.get(id)!.tenant === "")).toBe(true);
      early.forEach((w, i) => {
        expect(w.leaseId).toBe(queued[i]);
        const predicted = Math.ceil((queued.length - i) * (p.prediction.holdMs / limit));
        expect(predicted).toBeGreaterThanOrEqual(SHED_MARGIN * (asked.get(w.leaseId)!.deadline - now));
        // Its answer says how long it really waited.
        expect(w.deadline).toBe(now);
      });
      queued.splice(0, early.length);
      sheds += early.length;
    }
    for (const l of fx.granted) {
      const g = asked.get(l.id)!;
      // No waiter granted after its deadline.
      expect(g.deadline).toBeGreaterThan(now);
      // Classes first: nobody of a more urgent class is still queued (no reserve, no batch cap here).
      const rank = Math.min(...queued.map((id) => asked.get(id)!.rank));
      expect(g.rank).toBe(rank);
      // Tenants take turns: the granted tenant was served least recently of its class.
      const peers = queued.filter((id) => asked.get(id)!.rank === rank);
      const turnOf = (id: string) => turns.get(asked.get(id)!.tenant) ?? -1;
      const least = Math.min(...peers.map(turnOf));
      expect(turnOf(l.id)).toBe(least);
      // Among equals, the mode decides: the oldest (FIFO), or the newest under a standing queue.
      const equals = peers.filter((id) => turnOf(id) === least);
      expect(l.id).toBe(lifo ? equals[equals.length - 1] : equals[0]);
      if (lifo && equals.length > 1) lifoGrants++;
      // Newest first among equals only when the oldest waiter has waited past the target.
      if (l.id !== equals[0]) expect(now - since!).toBeGreaterThanOrEqual(QUEUE_INTERVAL_MS);
      queued.splice(queued.indexOf(l.id), 1);
      turns.set(g.tenant, ++turn);
      fence(l);
      expect(l.grantedAt).toBeLessThanOrEqual(now);
      held.push(l);
    }
    observe();
    expect(p.standing.lifo).toBe(lifo);
    expect(stats(p, now).queue).toEqual({ mode, lifo });
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
          { leaseId: id, holder: "h", waitMs: o.waitMs, ttlMs: o.ttlMs, priority: o.priority, tenant: o.tenant },
          now,
        );
        const rank = PRIORITIES.indexOf(o.priority ?? "normal");
        asked.set(id, { at: now, deadline: now + o.waitMs, rank, tenant: o.tenant ?? "" });
        apply(effects);
        // The wait prediction, from the model's queue: the pool's recent hold time over its slots,
        // times one plus the waiters certain to go first (more urgent classes; of its own class
        // and tenant, the earlier ones — none while newest-first is in force).
        // A waiter ahead whose deadline passes before its turn takes no slot.
        const pr = p.prediction;
        const every = pr.holdMs / limit;
        let ahead = 0;
        for (const q of queued) {
          const a = asked.get(q)!;
          const first = a.rank < rank || (a.rank === rank && !lifo && a.tenant === (o.tenant ?? ""));
          if (first && a.deadline - now >= (ahead + 1) * every) ahead++;
        }
        const predicted = pr.holds === 0 ? undefined : Math.ceil((ahead + 1) * every);
        const trusted =
          pr.holds >= SHED_MIN_SAMPLES && pr.waits >= SHED_MIN_SAMPLES && pr.earlyShare <= SHED_MAX_EARLY_SHARE;
        // Never one next in line: its wait is the rest of a hold.
        const hopeless = trusted && predicted !== undefined && ahead >= 1 && predicted >= SHED_MARGIN * o.waitMs;
        if (outcome.status === "rejected" && outcome.code === "ACQUIRE_TIMEOUT" && o.waitMs > 0) {
          // Told at once only on a trusted prediction past the margin; Retry-After is that prediction.
          expect(hopeless).toBe(true);
          expect(outcome.retryAfterMs).toBe(Math.min(30_000, Math.max(50, predicted!)));
          sheds++;
        }
        // Every hopeless caller who would have queued is told at once.
        if (outcome.status === "queued") expect(hopeless).toBe(false);
        if (outcome.status === "granted") {
          // Granted at once only when nobody waits (every waiter is one that may not take a slot).
          expect(queued).toHaveLength(0);
          turns.set(o.tenant ?? "", ++turn);
          fence(outcome.lease);
          held.push(outcome.lease);
        }
        if (outcome.status === "queued") {
          expect(outcome.deadline).toBe(now + o.waitMs);
          queued.push(id);
        }
        if (outcome.status === "rejected" && outcome.code === "QUEUE_FULL") expect(p.queue.length).toBe(maxQueue);
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
          apply(effects);
          // A second release of the same lease frees nothing. It is a transition all the same: a
          // hopeless waiter may be told now (the first one's grants may have left a plain queue,
          // or enough measured waits to trust the forecast).
          const again = release(p, { leaseId: l.id, fence: l.fence }, now);
          expect(again.outcome.status).toBe("failed");
          expect(again.effects.granted).toHaveLength(0);
          apply(again.effects);
        } else apply(effects);
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
      case "work": {
        now += o.ms;
        latest = Math.max(latest, now);
        apply(tick(p, now));
        for (const l of held.filter((h) => !crashed.has(h.id) && now - h.grantedAt >= o.holdMs)) {
          const { outcome, effects } = release(p, { leaseId: l.id, fence: l.fence }, now);
          expect(outcome.status).toBe("ok");
          held.splice(held.indexOf(l), 1);
          apply(effects);
        }
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
  return lifoGrants;
}

describe("core under generated interleavings", () => {
  it(`keeps its invariants over ${PROPERTY_RUNS} generated sequences`, { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 6 }),
        fc.array(op, { minLength: 5, maxLength: 60 }),
        fc.constantFrom<QueueMode>("fifo", "adaptive"),
        (limit, maxQueue, ops, mode) => void sequence(limit, maxQueue, ops, mode),
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

  it("keeps them while hopeless waits are told at once, in both queue modes, with classes and tenants", {
    timeout: 60_000,
  }, () => {
    const before = sheds;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.array(sheddingOp, { minLength: 100, maxLength: 250 }),
        fc.constantFrom<QueueMode>("fifo", "adaptive"),
        (limit, ops, mode) => void sequence(limit, 50, ops, mode),
      ),
      {
        numRuns: Math.ceil(PROPERTY_RUNS / 20),
        ...(process.env.LEASEGATE_PROPERTY_SEED ? { seed: Number(process.env.LEASEGATE_PROPERTY_SEED) } : {}),
      },
    );
    // The generator reaches what it is for: callers shed on their predicted wait.
    expect(sheds - before).toBeGreaterThan(PROPERTY_RUNS / 200);
  });

  it(`keeps them in crowded pools, where queues stand and the adaptive mode turns LIFO`, { timeout: 60_000 }, () => {
    let lifoGrants = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.array(crowdedOp, { minLength: 20, maxLength: 80 }),
        fc.constantFrom<QueueMode>("fifo", "adaptive"),
        (limit, ops, mode) => {
          lifoGrants += sequence(limit, 50, ops, mode);
        },
      ),
      {
        numRuns: Math.ceil(PROPERTY_RUNS / 5),
        ...(process.env.LEASEGATE_PROPERTY_SEED ? { seed: Number(process.env.LEASEGATE_PROPERTY_SEED) } : {}),
      },
    );
    // The generator reaches what it is for: grants of the newest among several equal waiters.
    expect(lifoGrants).toBeGreaterThan(100);
  });
});
