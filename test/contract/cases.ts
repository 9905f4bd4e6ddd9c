/**
 * The contract both coordinators keep: the Durable Object (`ConnectionCoordinator`) and
 * `PostgresCoordinator` must answer every call alike — codes, messages, result shapes, state —
 * because they run the same core. Each backend's test file calls `defineContract` once; a case
 * that fails on one backend only is drift between the two shells.
 *
 * Timing bounds are generous (the machines are small and noisy); TTLs and deadlines are short.
 */
import { describe, expect, it } from "vitest";
import {
  type AcquireOptions,
  type LeaseGrant,
  type PoolStats,
  QUEUE_INTERVAL_MS,
  QUEUE_TARGET_MS,
  TTL_CAP_FACTOR,
  leaseRef,
} from "../../src/core/index.ts";
import { CONTRACT_CONFIG, type ContractBackend, type ContractCoordinator, type ContractOptions } from "./backend.ts";

export { CONTRACT_CONFIG } from "./backend.ts";
export type { ContractBackend, ContractCoordinator, ContractOptions, ContractPool } from "./backend.ts";

const { limit: LIMIT, maxQueue: MAX_QUEUE, waitMs: WAIT_MS, leaseTtlMs: TTL_MS } = CONTRACT_CONFIG;
/** Slack on every time bound: deadline + this is still on time. */
const SLACK_MS = 300;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const STATS_KEYS = [
  "counters",
  "effectiveLimit",
  "held",
  "leaseTtlMs",
  "leases",
  "limit",
  "maxQueue",
  "maxWaitMs",
  "paused",
  "prediction",
  "queue",
  "recovery",
  "reserved",
  "waitHistogram",
  "waitMs",
  "waitTimeMs",
  "waiting",
];
const NOT_FOUND = "No such lease: it was never granted, or is already released or reaped";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** What a holder sends to renew or release: id, fence, the expiry it was told and its token. */
const refOf = leaseRef;
/** The message of a per-call `ttlMs` out of range (at most `TTL_CAP_FACTOR` × the pool's TTL). */
const badTtl = (got: number) =>
  `Expected \`ttlMs\` to be an integer from 1 to ${TTL_CAP_FACTOR * TTL_MS} (at most ${TTL_CAP_FACTOR} × the pool's leaseTtlMs of ${TTL_MS} ms), got \`${got}\` (number)`;
const keysOf = (value: object) => Object.keys(value).sort();

/** A lease that must be granted at once; fails the case with the answer otherwise. */
async function grant(c: ContractCoordinator, holder: string, options: AcquireOptions = {}): Promise<LeaseGrant> {
  const r = await c.acquire({ holder, waitMs: 0, ...options });
  if (!r.ok) throw new Error(`expected a grant for ${holder}, got ${r.code}: ${r.message}`);
  return r.lease;
}

async function fill(c: ContractCoordinator, n = LIMIT): Promise<LeaseGrant[]> {
  const leases: LeaseGrant[] = [];
  for (let i = 0; i < n; i++) leases.push(await grant(c, `held-${i + 1}`));
  return leases;
}

/** Waits (test-side) until the pool reports `n` waiters. */
/** Queues w1, w2 and w3 in that order; `order` records who is granted, as they are. */
async function queueThree(c: ContractCoordinator): Promise<{ order: string[]; waiters: Array<Promise<LeaseGrant>> }> {
  const order: string[] = [];
  const waiters: Array<Promise<LeaseGrant>> = [];
  for (const [i, holder] of ["w1", "w2", "w3"].entries()) {
    waiters.push(
      c.acquire({ holder, waitMs: 5000 }).then((r) => {
        if (!r.ok) throw new Error(`${holder}: ${r.code}`);
        order.push(holder);
        return r.lease;
      }),
    );
    await waitingIs(c, i + 1);
  }
  return { order, waiters };
}

async function waitingIs(c: ContractCoordinator, n: number): Promise<void> {
  await expect.poll(async () => (await c.stats()).waiting, { timeout: 3000, interval: 10 }).toBe(n);
}

/** The parts of stats that do not move with the clock. */
function steady(s: PoolStats) {
  return {
    held: s.held,
    waiting: s.waiting,
    counters: s.counters,
    waitTimeMs: s.waitTimeMs,
    waitHistogram: s.waitHistogram,
    leases: s.leases
      .map((l) => ({ idPrefix: l.idPrefix, holder: l.holder, fence: l.fence }))
      .sort((a, b) => a.fence - b.fence),
  };
}

/**
 * Declares the contract cases for one backend.
 *
 * @example
 * defineContract("PostgresCoordinator on Postgres", () => postgresBackend);
 */
export function defineContract(name: string, backend: () => ContractBackend): void {
  const fresh = (options?: ContractOptions) => backend().fresh(options);

  describe(`coordinator contract: ${name}`, () => {
    it("grants up to the limit with strictly increasing fences and the lease shape", async () => {
      const { coordinator: c } = await fresh();
      const before = Date.now();
      const leases = [await grant(c, "a"), await grant(c, "b"), await grant(c, "c", { ttlMs: 5000 })];
      const after = Date.now();
      expect(leases.map((l) => l.fence)).toEqual([1, 2, 3]);
      expect(new Set(leases.map((l) => l.id)).size).toBe(3);
      for (const l of leases) {
        // `token`: the Durable Object's proof of the lease (it recovers leases after a restart by
        // it); the Postgres backend keeps leases in tables and sets none.
        expect(keysOf(l).filter((k) => k !== "token")).toEqual([
          "expiresAt",
          "fence",
          "grantedAt",
          "holder",
          "id",
          "queuePosition",
          "validForMs",
        ]);
        // Granted at once: no place in the queue (what a trace shows as `leasegate.queue_position`).
        expect(l.queuePosition).toBe(0);
        if (l.token !== undefined) expect(l.token).toMatch(/^[A-Za-z0-9_-]{22}$/);
        // Granted at once: valid for its lifetime counted from the call's arrival, at or before the grant.
        expect(l.validForMs).toBeGreaterThanOrEqual(l.expiresAt - l.grantedAt);
        expect(l.validForMs).toBeLessThanOrEqual(l.expiresAt - l.grantedAt + (after - before));
        expect(l.id).toMatch(UUID);
        expect(l.grantedAt).toBeGreaterThanOrEqual(before);
        expect(l.grantedAt).toBeLessThanOrEqual(after);
        expect(l.grantedAt).toBeLessThanOrEqual(l.expiresAt);
      }
      expect(leases.map((l) => l.holder)).toEqual(["a", "b", "c"]);
      expect(leases.map((l) => l.expiresAt - l.grantedAt)).toEqual([TTL_MS, TTL_MS, 5000]);
      const s = await c.stats();
      expect(s).toMatchObject({ limit: LIMIT, held: 3, waiting: 0, counters: { granted: 3 } });
      expect(s.leases.map((l) => [l.holder, l.fence, l.idPrefix]).sort()).toEqual(
        leases.map((l) => [l.holder, l.fence, l.id.slice(0, 8)]),
      );
    });

    it("an acquire answer carries the pool's load: a grant at once and a grant after waiting", async () => {
      const { coordinator: c } = await fresh();
      const first = await c.acquire({ holder: "a" });
      expect(keysOf(first)).toEqual(["lease", "load", "ok"]);
      expect(first.load).toEqual({ held: 1, waiting: 0, limit: LIMIT });
      await grant(c, "b");
      const third = await grant(c, "c");
      const waiter = c.acquire({ holder: "w", waitMs: 3000 });
      await waitingIs(c, 1);
      expect(await c.release(refOf(third))).toEqual({ ok: true, released: true });
      const woken = await waiter;
      expect(woken).toMatchObject({ ok: true, lease: { holder: "w", fence: 4 } });
      expect(keysOf(woken)).toEqual(["lease", "load", "ok"]);
      expect(woken.load).toEqual({ held: 3, waiting: 0, limit: LIMIT });
    });

    it("an acquire that carries releases gives them back first, also when refused; a malformed one applies none", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      // A good ref before a malformed one: nothing is released, the acquire fails.
      expect(
        await c.acquire({ holder: "bad", waitMs: 0, release: [refOf(held[0]!), { leaseId: "", fence: 1 }] }),
      ).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: 'Expected `leaseId` to be a non-empty string of at most 128 characters, got `""` (string)',
      });
      expect(await c.acquire({ holder: "none", waitMs: 0, release: [] })).toMatchObject({
        ok: false,
        code: "INVALID_ARGUMENT",
      });
      expect(await c.stats()).toMatchObject({ held: LIMIT, counters: { released: 0 } });
      // A full pool and no wait: granted because the carried release went first. The same ref
      // twice: the second finds nothing and changes nothing.
      const next = await c.acquire({ holder: "next", waitMs: 0, release: [refOf(held[0]!), refOf(held[0]!)] });
      expect(next).toMatchObject({ ok: true, lease: { holder: "next", fence: LIMIT + 1 } });
      expect(await c.stats()).toMatchObject({ held: LIMIT, counters: { granted: LIMIT + 1, released: 1 } });
      expect(await c.release(refOf(held[0]!))).toMatchObject({ ok: false, code: "LEASE_NOT_FOUND" });
      // An acquire refused for its own options still gives back what it carried: the waiter gets the slot.
      const first = c.acquire({ holder: "first-waiter", waitMs: 3000 });
      await waitingIs(c, 1);
      expect(await c.acquire({ holder: "bad-wait", waitMs: -1, release: [refOf(held[2]!)] })).toMatchObject({
        ok: false,
        code: "INVALID_ARGUMENT",
      });
      expect(await first).toMatchObject({ ok: true, lease: { holder: "first-waiter" } });
      expect(await c.stats()).toMatchObject({ held: LIMIT, counters: { released: 2 } });
      // A waiter is served by a release another caller's acquire carries, in its turn.
      const waiter = c.acquire({ holder: "waiter", waitMs: 3000 });
      await waitingIs(c, 1);
      const behind = await c.acquire({ holder: "behind", waitMs: 0, release: [refOf(held[1]!)] });
      expect(behind).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
      expect(await waiter).toMatchObject({ ok: true, lease: { holder: "waiter" } });
    });

    it("a grant from the queue lives claimMs until claimed; unclaimed it lapses and the next waiter gets the slot", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      const first = await grant(c, "x", { claimMs: 250 }).catch(() => undefined);
      expect(first).toBeUndefined(); // full: a grant at once would have ignored claimMs anyway
      const gone = c.acquire({ holder: "gone", waitMs: 3000, claimMs: 250 });
      const next = c.acquire({ holder: "next", waitMs: 3000, claimMs: 250 });
      await waitingIs(c, 2);
      const freedAt = Date.now();
      await c.release(refOf(held[0]!));
      const g = await gone;
      expect(g).toMatchObject({ ok: true, lease: { holder: "gone" } });
      if (!g.ok) return;
      expect(g.lease.expiresAt - g.lease.grantedAt).toBe(250);
      // "gone" never claims: its slot goes to "next" at the claim window, not at the 30 s TTL.
      const n = await next;
      expect(n).toMatchObject({ ok: true, lease: { holder: "next" } });
      expect(Date.now() - freedAt).toBeLessThan(250 + SLACK_MS);
      if (!n.ok) return;
      const claimed = await c.renew(refOf(n.lease));
      expect(claimed).toMatchObject({ ok: true });
      if (claimed.ok) expect(claimed.lease.expiresAt - Date.now()).toBeGreaterThan(TTL_MS - SLACK_MS);
      expect(await c.renew(refOf(g.lease))).toMatchObject({ ok: false });
      expect((await c.stats()).counters).toMatchObject({ expired: 1 });
    });

    it("a refused acquire carries the pool's load: waitMs 0 and a deadline", async () => {
      const { coordinator: c } = await fresh();
      await fill(c);
      const now = await c.acquire({ holder: "now", waitMs: 0 });
      expect(keysOf(now)).toEqual(["code", "load", "message", "ok", "retryAfterMs"]);
      expect(now.load).toEqual({ held: 3, waiting: 0, limit: LIMIT });
      const late = await c.acquire({ holder: "late", waitMs: 100 });
      expect(keysOf(late)).toEqual(["code", "load", "message", "ok", "retryAfterMs"]);
      expect(late.load).toEqual({ held: 3, waiting: 0, limit: LIMIT });
    });

    it("wakes queued waiters in arrival order as slots free", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      const { order, waiters } = await queueThree(c);
      expect(order).toEqual([]);
      for (const l of held) expect(await c.release(refOf(l))).toEqual({ ok: true, released: true });
      const granted = await Promise.all(waiters);
      expect(order).toEqual(["w1", "w2", "w3"]);
      expect(granted.map((l) => [l.holder, l.fence, l.queuePosition])).toEqual([
        ["w1", 4, 1],
        ["w2", 5, 2],
        ["w3", 6, 3],
      ]);
      const s = await c.stats();
      expect(s).toMatchObject({ held: 3, waiting: 0, counters: { granted: 6, released: 3, timedOut: 0 } });
      expect(s.waitTimeMs.count).toBe(6);
    });

    it("times a waiter out at its deadline with ACQUIRE_TIMEOUT naming limit, held and waiting", async () => {
      const { coordinator: c } = await fresh();
      await fill(c);
      const started = Date.now();
      const r = await c.acquire({ holder: "late", waitMs: 150 });
      const waited = Date.now() - started;
      expect(waited).toBeGreaterThanOrEqual(140);
      expect(waited).toBeLessThan(150 + SLACK_MS);
      expect(r).toMatchObject({
        ok: false,
        code: "ACQUIRE_TIMEOUT",
        message: `Timed out after 150 ms waiting for a connection slot (limit ${LIMIT}, 3 held, 0 waiting)`,
      });
      expect(!r.ok && r.retryAfterMs).toBeGreaterThan(0);
      const s = await c.stats();
      expect(s).toMatchObject({ held: 3, waiting: 0, counters: { timedOut: 1, granted: 3 } });
      expect(s.waitTimeMs.count).toBe(4);
    });

    it("a waiter without waitMs waits the pool's default deadline", async () => {
      const { coordinator: c } = await fresh();
      await fill(c);
      const started = Date.now();
      const r = await c.acquire({ holder: "default" });
      const waited = Date.now() - started;
      expect(waited).toBeGreaterThanOrEqual(WAIT_MS - 10);
      expect(waited).toBeLessThan(WAIT_MS + SLACK_MS);
      expect(r).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
      expect(!r.ok && r.message).toMatch(
        new RegExp(`^Timed out after ${WAIT_MS} ms waiting for a connection slot \\(limit ${LIMIT}\\b`),
      );
    });

    it("refuses at once with ACQUIRE_TIMEOUT when waitMs is 0 and no slot is free", async () => {
      const { coordinator: c } = await fresh();
      await fill(c);
      const started = Date.now();
      const r = await c.acquire({ holder: "now", waitMs: 0 });
      expect(Date.now() - started).toBeLessThan(SLACK_MS);
      expect(r).toMatchObject({
        ok: false,
        code: "ACQUIRE_TIMEOUT",
        message: `No connection slot free (limit ${LIMIT}, 3 held, 0 waiting) and the caller would not wait`,
      });
      expect(!r.ok && r.retryAfterMs).toBeGreaterThan(0);
      expect(await c.stats()).toMatchObject({ held: 3, waiting: 0, counters: { timedOut: 1, rejected: 0 } });
    });

    it("sheds at once with QUEUE_FULL once the queue holds maxQueue waiters", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      const queued: Array<Promise<LeaseGrant>> = [];
      for (let i = 0; i < MAX_QUEUE; i++) {
        queued.push(
          c.acquire({ holder: `q${i + 1}`, waitMs: 5000 }).then((r) => {
            if (!r.ok) throw new Error(`q${i + 1}: ${r.code}`);
            return r.lease;
          }),
        );
      }
      await waitingIs(c, MAX_QUEUE);
      const started = Date.now();
      const r = await c.acquire({ holder: "shed", waitMs: 5000 });
      expect(Date.now() - started).toBeLessThan(SLACK_MS);
      expect(r).toMatchObject({
        ok: false,
        code: "QUEUE_FULL",
        message: `Wait queue is full (limit ${LIMIT}, 3 held, ${MAX_QUEUE} waiting, max queue ${MAX_QUEUE})`,
      });
      expect(!r.ok && r.retryAfterMs).toBeGreaterThan(0);
      expect(await c.stats()).toMatchObject({ waiting: MAX_QUEUE, counters: { rejected: 1, timedOut: 0 } });
      // Drain: the held leases go to q1..q3, theirs to q4 and q5.
      for (const l of held) await c.release(refOf(l));
      const first = await Promise.all(queued.slice(0, 3));
      for (const l of first) await c.release(refOf(l));
      const all = await Promise.all(queued);
      expect(all.map((l) => l.holder)).toEqual(["q1", "q2", "q3", "q4", "q5"]);
    });

    it("reaps a lease past its TTL and gives its slot to a waiter", async () => {
      const { coordinator: c } = await fresh();
      const dead = await grant(c, "dies", { ttlMs: 200 });
      await fill(c, 2);
      const started = Date.now();
      const r = await c.acquire({ holder: "next", waitMs: 3000 });
      const waited = Date.now() - started;
      expect(r).toMatchObject({ ok: true, lease: { holder: "next", fence: 4 } });
      expect(waited).toBeLessThan(200 + SLACK_MS);
      expect(Date.now()).toBeGreaterThanOrEqual(dead.expiresAt);
      const s = await c.stats();
      expect(s).toMatchObject({ held: 3, waiting: 0, counters: { expired: 1, granted: 4, released: 0 } });
      expect(s.leases.map((l) => l.holder).sort()).toEqual(["held-1", "held-2", "next"]);
      // Reaped: its holder's late release and renewal find nothing.
      expect(await c.release(refOf(dead))).toEqual({ ok: false, code: "LEASE_NOT_FOUND", message: NOT_FOUND });
      expect(await c.renew(refOf(dead))).toEqual({ ok: false, code: "LEASE_NOT_FOUND", message: NOT_FOUND });
    });

    it("reaps a lease at its TTL when nobody waits: stats show it gone and its release finds nothing", async () => {
      const { coordinator: c } = await fresh();
      const dead = await grant(c, "dies", { ttlMs: 150 });
      await sleep(150 + SLACK_MS);
      const s = await c.stats();
      // Soft: record every differing value, not only the first.
      expect.soft(s.held, "held after the TTL").toBe(0);
      expect.soft(s.counters.expired, "counters.expired after the TTL").toBe(1);
      expect
        .soft(await c.release(refOf(dead)), "release after the TTL")
        .toEqual({ ok: false, code: "LEASE_NOT_FOUND", message: NOT_FOUND });
      expect((await c.stats()).held).toBe(0);
    });

    it("fencing: a forged id, a stale fence and a double release free nothing", async () => {
      const { coordinator: c } = await fresh();
      const lease = await grant(c, "a");
      expect(await c.release({ leaseId: crypto.randomUUID(), fence: lease.fence })).toEqual({
        ok: false,
        code: "LEASE_NOT_FOUND",
        message: NOT_FOUND,
      });
      expect(await c.release({ leaseId: lease.id, fence: lease.fence + 1 })).toEqual({
        ok: false,
        code: "STALE_FENCE",
        message: `Fence ${lease.fence + 1} does not match the lease's fence`,
      });
      expect(await c.renew({ leaseId: lease.id, fence: lease.fence + 1 })).toMatchObject({
        ok: false,
        code: "STALE_FENCE",
      });
      expect((await c.stats()).held).toBe(1);
      expect(await c.release(refOf(lease))).toEqual({ ok: true, released: true });
      expect(await c.release(refOf(lease))).toEqual({ ok: false, code: "LEASE_NOT_FOUND", message: NOT_FOUND });
      expect(await c.stats()).toMatchObject({ held: 0, counters: { granted: 1, released: 1 } });
    });

    it("renew extends expiresAt from now so the lease outlives its first TTL", async () => {
      const { coordinator: c } = await fresh();
      const lease = await grant(c, "long", { ttlMs: 300 });
      const before = Date.now();
      const r = await c.renew(refOf(lease), 5000);
      const after = Date.now();
      expect(keysOf(r)).toEqual(["lease", "ok"]);
      if (!r.ok) throw new Error(r.code);
      expect(r.lease).toMatchObject({ id: lease.id, fence: lease.fence, holder: "long", grantedAt: lease.grantedAt });
      expect(r.lease.expiresAt).toBeGreaterThanOrEqual(before + 5000);
      expect(r.lease.expiresAt).toBeLessThanOrEqual(after + 5000);
      await sleep(300 + 100);
      expect(await c.stats()).toMatchObject({ held: 1, counters: { expired: 0 } });
      // Without ttlMs: the pool's TTL from now.
      const again = await c.renew(refOf(lease));
      expect(again.ok && again.lease.expiresAt - Date.now()).toBeGreaterThan(TTL_MS - SLACK_MS);
      expect(await c.renew({ leaseId: crypto.randomUUID(), fence: 1 })).toEqual({
        ok: false,
        code: "LEASE_NOT_FOUND",
        message: NOT_FOUND,
      });
      expect(await c.renew(refOf(lease), -5)).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: badTtl(-5),
      });
    });

    it("pause stops granting, resume grants the queue in order; ControlResult shape", async () => {
      const { coordinator: c } = await fresh();
      const running = await grant(c, "running");
      const paused = await c.pause();
      expect(paused).toEqual({ ok: true, paused: true, limit: LIMIT, limitOverride: null });
      expect((await c.stats()).paused).toBe(true);
      expect(await c.acquire({ holder: "now", waitMs: 0 })).toMatchObject({
        ok: false,
        code: "ACQUIRE_TIMEOUT",
        message: `No connection slot free (limit ${LIMIT}, 1 held, 0 waiting, paused) and the caller would not wait`,
      });
      // Held leases run on: renew and release work while paused.
      expect((await c.renew(refOf(running))).ok).toBe(true);
      const order: string[] = [];
      const waiters = ["p1", "p2"].map((holder) =>
        c.acquire({ holder, waitMs: 5000 }).then((r) => {
          order.push(holder);
          return r;
        }),
      );
      await waitingIs(c, 2);
      expect(await c.release(refOf(running))).toEqual({ ok: true, released: true });
      await sleep(50);
      expect(await c.stats()).toMatchObject({ held: 0, waiting: 2, paused: true });
      expect(await c.resume()).toEqual({ ok: true, paused: false, limit: LIMIT, limitOverride: null });
      const granted = await Promise.all(waiters);
      expect(granted.map((r) => r.ok && [r.lease.holder, r.lease.fence])).toEqual([
        ["p1", 2],
        ["p2", 3],
      ]);
      expect(order).toEqual(["p1", "p2"]);
      expect(await c.stats()).toMatchObject({ held: 2, waiting: 0, paused: false });
    });

    it("setLimit raises the limit live and null returns to the configured one, revoking nothing", async () => {
      const { coordinator: c } = await fresh();
      await fill(c);
      const waiter = c.acquire({ holder: "w", waitMs: 5000 });
      await waitingIs(c, 1);
      expect(await c.setLimit(4)).toEqual({ ok: true, paused: false, limit: 4, limitOverride: 4 });
      expect(await waiter).toMatchObject({ ok: true, lease: { holder: "w", fence: 4 } });
      expect(await c.stats()).toMatchObject({ limit: 4, effectiveLimit: 4, held: 4, waiting: 0 });
      expect(await c.operatorStats()).toMatchObject({ limit: 4, limitOverride: 4 });
      expect(await c.setLimit(null)).toEqual({ ok: true, paused: false, limit: LIMIT, limitOverride: null });
      expect(await c.stats()).toMatchObject({ limit: LIMIT, held: 4 });
      expect(await c.operatorStats()).toMatchObject({ limit: LIMIT, limitOverride: null });
      expect(await c.acquire({ holder: "over", waitMs: 0 })).toMatchObject({
        ok: false,
        code: "ACQUIRE_TIMEOUT",
        message: `No connection slot free (limit ${LIMIT}, 4 held, 0 waiting) and the caller would not wait`,
      });
      expect(await c.setLimit(0)).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: "Expected `limit` to be an integer from 1 to 10000, got `0` (number)",
      });
      expect((await c.stats()).limit).toBe(LIMIT);
    });

    it("revoke: the lease stays held while its statement may run; the queue waits, renewal is LEASE_LOST, release frees", async () => {
      const { coordinator: c } = await fresh();
      const stuck = await grant(c, "stuck-holder");
      await fill(c, LIMIT - 1);
      const short = stuck.id.slice(0, 7);
      expect(await c.revoke(short)).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: `Expected \`id\` to be a lease id or its prefix of 8 to 128 characters, got \`"${short}"\` (string)`,
      });
      const prefix = stuck.id.slice(0, 8);
      const revoked = await c.revoke(prefix);
      expect(revoked).toMatchObject({ ok: true, revoked: true, idPrefix: prefix, holder: "stuck-holder" });
      expect(revoked.ok && revoked.expiresInMs).toBeGreaterThan(TTL_MS - 5000);
      // Counted as held and shown as revoked; revoking again changes nothing.
      const s = await c.stats();
      expect(s.held).toBe(LIMIT);
      expect(s.leases.find((l) => l.idPrefix === prefix)).toMatchObject({ holder: "stuck-holder", revoked: true });
      expect(await c.revoke(prefix)).toMatchObject({ ok: true, revoked: true });
      // The next caller is not granted its slot while the revoked holder may still run a statement.
      const next = c.acquire({ holder: "next", waitMs: 3000 });
      await waitingIs(c, 1);
      expect(await c.renew(refOf(stuck))).toEqual({
        ok: false,
        code: "LEASE_LOST",
        message: "An operator revoked this lease: stop the work that uses its connection, then release it",
      });
      await sleep(100);
      expect(await c.stats()).toMatchObject({ held: LIMIT, waiting: 1 });
      // The holder stops and releases: the slot is free at once, and goes to the waiter.
      expect(await c.release(refOf(stuck))).toEqual({ ok: true, released: true });
      const granted = await next;
      expect(granted).toMatchObject({ ok: true, lease: { holder: "next" } });
      expect(await c.revoke(prefix)).toEqual({
        ok: false,
        code: "LEASE_NOT_FOUND",
        message: `No held lease has an id starting with \`${prefix}\``,
      });
      expect(await c.release(refOf(stuck))).toEqual({ ok: false, code: "LEASE_NOT_FOUND", message: NOT_FOUND });
      expect(await c.stats()).toMatchObject({ held: LIMIT, counters: { released: 1, expired: 0 } });
    });

    it("revoke: a revoked lease whose holder never releases comes back at its expiry, not before", async () => {
      const { coordinator: c } = await fresh();
      const ttlMs = 700;
      const stuck = await grant(c, "stuck-holder", { ttlMs });
      await fill(c, LIMIT - 1);
      expect(await c.revoke(stuck.id)).toMatchObject({ ok: true, revoked: true });
      const started = Date.now();
      const next = await c.acquire({ holder: "next", waitMs: 3000 });
      expect(next).toMatchObject({ ok: true, lease: { holder: "next" } });
      // Not before the revoked lease's expiry (as its grant said), and soon after it.
      expect(Date.now()).toBeGreaterThanOrEqual(stuck.expiresAt);
      expect(Date.now() - started).toBeLessThan(ttlMs + SLACK_MS * 3);
      expect(await c.stats()).toMatchObject({ held: LIMIT, counters: { expired: 1 } });
    });

    it("reconcile compares counts with the leases held and keeps the result for operators; bad counts change nothing", async () => {
      const { coordinator: c } = await fresh();
      await fill(c, 2);
      const counts = { role: "app", applicationName: "web", roleConnections: LIMIT + 1, appConnections: 3 };
      const result = await c.reconcile(counts);
      if (!result.ok) throw new Error(`expected a reconciliation, got ${result.code}: ${result.message}`);
      const { ok: _, ...r } = result;
      expect(r).toMatchObject({ ...counts, held: 2, limit: LIMIT, drift: 1, overLimit: true, status: "over_limit" });
      expect((await c.operatorStats()).reconciliation).toEqual(r);
      expect(await c.reconcile({ ...counts, appConnections: -1 })).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: "Expected `appConnections` to be an integer from 0 to 9007199254740991, got `-1` (number)",
      });
      expect(await c.reconcile({ ...counts, role: null as unknown as string })).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: "Expected `role` to be a string, got `null` (null)",
      });
      expect((await c.operatorStats()).reconciliation).toEqual(r);
    });

    it("a critical waiter queued after normal ones is granted first", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      const order: string[] = [];
      const waiters: Array<Promise<unknown>> = [];
      for (const [i, [holder, priority]] of (
        [
          ["n1", "normal"],
          ["n2", "normal"],
          ["c1", "critical"],
        ] as const
      ).entries()) {
        waiters.push(
          c.acquire({ holder, priority, waitMs: 5000 }).then((r) => {
            if (!r.ok) throw new Error(`${holder}: ${r.code}`);
            order.push(holder);
          }),
        );
        await waitingIs(c, i + 1);
      }
      for (const l of held) await c.release(refOf(l));
      await Promise.all(waiters);
      expect(order).toEqual(["c1", "n1", "n2"]);
    });

    it("LEASE_QUEUE=adaptive: under a standing queue the newest waiter is granted first", async () => {
      const { coordinator: c } = await fresh({ queue: "adaptive" });
      expect((await c.stats()).queue).toEqual({ mode: "adaptive", lifo: false });
      const held = await fill(c);
      const { order, waiters } = await queueThree(c);
      // The oldest has now waited past the target for longer than the interval: a standing queue.
      await sleep(QUEUE_TARGET_MS + QUEUE_INTERVAL_MS + 50);
      await c.release(refOf(held[0]!));
      await expect.poll(() => order.length, { timeout: 3000, interval: 10 }).toBe(1);
      expect(order).toEqual(["w3"]);
      // w1 and w2 still stand past the target: LIFO stays in force (and so in the stored state).
      expect((await c.stats()).queue).toEqual({ mode: "adaptive", lifo: true });
      await c.release(refOf(held[1]!));
      await c.release(refOf(held[2]!));
      await Promise.all(waiters);
      expect(order).toEqual(["w3", "w2", "w1"]);
      // The queue drained: FIFO again.
      expect((await c.stats()).queue).toEqual({ mode: "adaptive", lifo: false });
      // A pool of the default mode says so (its order is the arrival-order case above).
      expect((await (await fresh()).coordinator.stats()).queue).toEqual({ mode: "fifo", lifo: false });
    });

    it("two tenants take turns for slots", async () => {
      const { coordinator: c } = await fresh();
      const held = await fill(c);
      const order: string[] = [];
      const granted: Array<Promise<LeaseGrant>> = [];
      for (const [i, [holder, tenant]] of (
        [
          ["a1", "a"],
          ["a2", "a"],
          ["a3", "a"],
          ["b1", "b"],
        ] as const
      ).entries()) {
        granted.push(
          c.acquire({ holder, tenant, waitMs: 5000 }).then((r) => {
            if (!r.ok) throw new Error(`${holder}: ${r.code}`);
            order.push(holder);
            return r.lease;
          }),
        );
        await waitingIs(c, i + 1);
      }
      for (const l of held) await c.release(refOf(l));
      await expect.poll(() => order.length, { timeout: 3000, interval: 10 }).toBe(3);
      // a1 came first; then b1, whose tenant had not been served, before a's later waiters.
      expect(order).toEqual(["a1", "b1", "a2"]);
      await c.release(refOf(await granted[0]!));
      await Promise.all(granted);
      expect(order).toEqual(["a1", "b1", "a2", "a3"]);
    });

    it("across a restart: live earlier leases keep their slots and renew, the limit counts them, fences increase", async () => {
      // What both backends guarantee. How: Postgres keeps the lease rows; the Durable Object keeps
      // leases in memory and recovers them from verified renewals, granting nothing until it has.
      const pool = await fresh();
      const ttlMs = 1000;
      const a = await grant(pool.coordinator, "a", { ttlMs });
      const b = await grant(pool.coordinator, "b", { ttlMs });
      // Its holder dies: nobody renews it, so its slot comes back at its expiry at the latest.
      const dead = await grant(pool.coordinator, "dead", { ttlMs: 200 });
      const c = await pool.restart();
      // a's and b's holders heartbeat through the restart, as the client's heartbeat does.
      let beating = true;
      const beat = async (first: LeaseGrant) => {
        let l = first;
        while (beating) {
          const r = await c.renew(refOf(l), ttlMs);
          expect(r).toMatchObject({ ok: true, lease: { id: first.id, fence: first.fence } });
          if (r.ok) l = r.lease;
          await sleep(ttlMs / 4);
        }
        return l;
      };
      const beats = [beat(a), beat(b)];
      const next = await c.acquire({ holder: "next", waitMs: 8000, ttlMs });
      if (!next.ok) throw new Error(`expected a grant, got ${next.code}: ${next.message}`);
      expect(next.lease.fence).toBeGreaterThan(dead.fence);
      // a and b are alive and counted: the pool is full.
      expect(await c.acquire({ holder: "over", waitMs: 0 })).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
      expect((await c.stats()).held).toBe(LIMIT);
      beating = false;
      for (const l of await Promise.all(beats)) expect(await c.release(refOf(l))).toEqual({ ok: true, released: true });
      expect(await c.release(refOf(next.lease))).toEqual({ ok: true, released: true });
      expect(await c.release(refOf(dead))).toMatchObject({ ok: false, code: "LEASE_NOT_FOUND" });
      expect(await c.stats()).toMatchObject({ held: 0, waiting: 0 });
    });

    it("counters and the wait histogram written a quiet second before a restart are the same after it", async () => {
      const pool = await fresh();
      let c = pool.coordinator;
      const held = await fill(c);
      const waiter = c.acquire({ holder: "w", waitMs: 5000 });
      await waitingIs(c, 1);
      await sleep(30);
      await c.release(refOf(held[0]!));
      expect((await waiter).ok).toBe(true);
      expect((await c.acquire({ holder: "no", waitMs: 0 })).ok).toBe(false);
      const before = await c.stats();
      expect(before.counters).toEqual({ granted: 4, released: 1, expired: 0, timedOut: 1, rejected: 0, cancelled: 0 });
      expect(before.waitTimeMs.count).toBe(4);
      // The Durable Object writes them off the request path within a second (a crash may lose that second).
      await sleep(1200);
      c = await pool.restart();
      const after = await c.stats();
      expect.soft(after.counters, "counters after the restart").toEqual(before.counters);
      expect.soft(after.waitTimeMs, "waitTimeMs after the restart").toEqual(before.waitTimeMs);
      expect.soft(after.waitHistogram, "waitHistogram after the restart").toEqual(before.waitHistogram);
    });

    it("the paused flag and the limit override survive a restart", async () => {
      const pool = await fresh();
      let c = pool.coordinator;
      expect(await c.setLimit(5)).toEqual({ ok: true, paused: false, limit: 5, limitOverride: 5 });
      expect(await c.pause()).toEqual({ ok: true, paused: true, limit: 5, limitOverride: 5 });
      c = await pool.restart();
      expect(await c.operatorStats()).toMatchObject({ paused: true, limit: 5, limitOverride: 5 });
      expect(await c.acquire({ holder: "now", waitMs: 0 })).toMatchObject({
        ok: false,
        code: "ACQUIRE_TIMEOUT",
        message: "No connection slot free (limit 5, 0 held, 0 waiting, paused) and the caller would not wait",
      });
      expect(await c.resume()).toEqual({ ok: true, paused: false, limit: 5, limitOverride: 5 });
      expect(await c.setLimit(null)).toEqual({ ok: true, paused: false, limit: LIMIT, limitOverride: null });
      c = await pool.restart();
      expect(await c.operatorStats()).toMatchObject({ paused: false, limit: LIMIT, limitOverride: null });
      expect((await c.acquire({ holder: "after" })).ok).toBe(true);
    });

    it("bad input fails with INVALID_ARGUMENT and leaves the state unchanged", async () => {
      const { coordinator: c } = await fresh();
      const lease = await grant(c, "a");
      const before = steady(await c.stats());
      expect(await c.acquire({ holder: "x", ttlMs: -1 })).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: badTtl(-1),
      });
      expect(await c.acquire({ holder: 5 as never })).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: "Expected `holder` to be a string of at most 200 characters, got `5` (number)",
      });
      expect(await c.acquire({ holder: "x", waitMs: -1 })).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
      expect(await c.acquire({ holder: "x", priority: "urgent" as never })).toMatchObject({
        ok: false,
        code: "INVALID_ARGUMENT",
      });
      expect(await c.release({ leaseId: lease.id, fence: "1" as never })).toEqual({
        ok: false,
        code: "INVALID_ARGUMENT",
        message: 'Expected `fence` to be an integer from 1 to 9007199254740991, got `"1"` (string)',
      });
      expect(steady(await c.stats())).toEqual(before);
    });

    it("a fixed limit learns nothing: learnDue is false and learnLimit refuses with INVALID_ARGUMENT, state unchanged", async () => {
      const { coordinator: c } = await fresh();
      expect(await c.learnDue()).toBe(false);
      const counts = {
        maxConnections: 100,
        superuserReserved: 3,
        reserved: null,
        roleLimit: null,
        databaseLimit: null,
        othersOnServer: 0,
        othersOfRole: 0,
        othersInDatabase: 0,
      };
      expect(await c.learnLimit({ ok: true, counts })).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
      expect(await c.learnLimit({ ok: false, code: "DATABASE_UNAVAILABLE", message: "down" })).toMatchObject({
        ok: false,
        code: "INVALID_ARGUMENT",
      });
      expect(await c.operatorStats()).toMatchObject({
        limit: LIMIT,
        limitSource: "configured",
        learned: null,
        learnedAgeMs: null,
        learnFailure: null,
      });
    });

    it("stats and operatorStats have the same keys and a fresh pool's values", async () => {
      const { coordinator: c } = await fresh();
      const s = await c.stats();
      expect(keysOf(s)).toEqual(STATS_KEYS);
      expect(s).toMatchObject({
        limit: LIMIT,
        effectiveLimit: LIMIT,
        reserved: 0,
        held: 0,
        waiting: 0,
        maxWaitMs: 0,
        maxQueue: MAX_QUEUE,
        waitMs: WAIT_MS,
        leaseTtlMs: TTL_MS,
        leases: [],
        paused: false,
      });
      expect(s.counters).toEqual({ granted: 0, released: 0, expired: 0, timedOut: 0, rejected: 0, cancelled: 0 });
      // Nothing learned yet: no wait forecast measured, no shedding.
      expect(s.prediction).toMatchObject({ shed: 0, waits: 0, holdMs: 0, shedding: false });
      expect(keysOf(s.waitTimeMs)).toEqual(["count", "max", "p50", "p90", "p99", "sum"]);
      expect(keysOf(s.waitHistogram)).toEqual(["bounds", "counts"]);
      expect(s.waitHistogram.counts.length).toBe(s.waitHistogram.bounds.length + 1);
      const lease = await grant(c, "a");
      await fill(c, 2);
      const waiter = c.acquire({ holder: "w", waitMs: 5000 });
      await waitingIs(c, 1);
      const busy = await c.stats();
      expect(keysOf(busy)).toEqual(STATS_KEYS);
      expect(keysOf(busy.leases[0]!)).toEqual(["ageMs", "expiresInMs", "fence", "holder", "idPrefix"]);
      const o = await c.operatorStats();
      expect(keysOf(o)).toEqual(
        [
          ...STATS_KEYS,
          "learnFailure",
          "learned",
          "learnedAgeMs",
          "limitOverride",
          "limitSource",
          "reconciliation",
        ].sort(),
      );
      expect(o).toMatchObject({
        limitOverride: null,
        reconciliation: null,
        limitSource: "configured",
        learned: null,
        learnFailure: null,
      });
      await c.release(refOf(lease));
      expect((await waiter).ok).toBe(true);
    });
  });
}
