import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { DEFAULT_CONFIG } from "../../src/core/index.ts";
import { type Proc, answered, startWorker } from "./procs.ts";
import { forgetPools } from "./helpers.ts";

/**
 * Callers that vanish, as production loses them: real OS processes killed with SIGKILL while they
 * hold slots (mid-work, heartbeat running) and while they wait in the queue. No `finally`, no
 * release, no close: the process is simply gone. Lease TTL and heartbeat are the defaults
 * (1500 ms, a beat every 500 ms). The figures logged here are quoted in docs/reliability.md.
 */
const url = process.env.LEASEGATE_TEST_DATABASE_URL!;
const LIMIT = 5;
const TTL_MS = DEFAULT_CONFIG.leaseTtlMs;
const RUN = `vanish-${process.pid}-${Date.now()}`;
const APP = `lg-vanish-${process.pid}`;
const admin = postgres(url, { max: 2, onnotice: () => {} });
const figures: string[] = [];
const started: Proc[] = [];
let seq = 0;

afterAll(async () => {
  for (const p of started) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await forgetPools(admin, `${RUN}-%`);
  await admin.end();
  console.log(`[reliability] vanish (local): ${figures.join("; ")}`);
});

function pool() {
  const name = `${RUN}-${++seq}`;
  const env = {
    DATABASE_URL: url,
    APP_NAME: APP,
    LEASE_POOL: name,
    LEASE_LIMIT: String(LIMIT),
    LEASE_TTL_MS: String(TTL_MS),
    LEASE_WAIT_MS: "5000",
    LEASE_MAX_QUEUE: "100",
  };
  return {
    name,
    start: async () => {
      const p = await startWorker(env);
      started.push(p);
      return p;
    },
    counts: async () => {
      const [row] = await admin`
        SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = ${APP})::int AS conns,
               (SELECT count(*) FROM leasegate_leases WHERE pool = ${name})::int AS held,
               (SELECT count(*) FROM leasegate_waiters WHERE pool = ${name})::int AS waiting`;
      return row as unknown as { conns: number; held: number; waiting: number };
    },
  };
}
type Pool = ReturnType<typeof pool>;

async function until(p: Pool, what: (c: Awaited<ReturnType<Pool["counts"]>>) => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!what(await p.counts())) {
    if (Date.now() > end) throw new Error(`not reached in ${ms} ms: ${JSON.stringify(await p.counts())}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Samples held slots and open connections until stopped; both must stay at or below the limit. */
function sampler(p: Pool) {
  let on = true;
  let max = { held: 0, conns: 0 };
  const done = (async () => {
    while (on) {
      const c = await p.counts();
      max = { held: Math.max(max.held, c.held), conns: Math.max(max.conns, c.conns) };
    }
  })();
  return {
    stop: async () => {
      on = false;
      await done;
      return max;
    },
  };
}

/**
 * Fills the pool: 3 slots held by `victimA` (long work), 2 by `survivor`; then 2 waiters of
 * `victimB`, then 3 of `survivor` behind them.
 */
async function fill(
  p: Pool,
  victimA: Proc,
  victimB: Proc,
  survivor: Proc,
  work: { ttlMs?: number; heartbeatMs?: number },
  waitMs: number,
) {
  for (let i = 0; i < 3; i++) victimA.send({ cmd: "work", tag: `a${i}`, holdMs: 120_000, ...work });
  for (let i = 0; i < 2; i++) survivor.send({ cmd: "work", tag: `s${i}`, holdMs: 120_000 });
  await Promise.all([0, 1, 2].map((i) => victimA.next(answered(`a${i}`))));
  await Promise.all([0, 1].map((i) => survivor.next(answered(`s${i}`))));
  for (let i = 0; i < 2; i++) victimB.send({ cmd: "work", tag: `b${i}`, holdMs: 120_000, waitMs: 60_000, ...work });
  await until(p, (c) => c.waiting === 2);
  for (let i = 0; i < 3; i++) survivor.send({ cmd: "work", tag: `q${i}`, holdMs: 50, waitMs });
  await until(p, (c) => c.waiting === 5);
}

describe("callers that vanish (SIGKILL), local adapter on real processes", () => {
  it("holders killed mid-work and waiters killed mid-wait: their 5 slots and places are back within one lease TTL, never above the limit", async () => {
    const p = pool();
    const [victimA, victimB, survivor] = await Promise.all([p.start(), p.start(), p.start()]);
    await fill(p, victimA, victimB, survivor, {}, 10_000);
    // Live holders outlast their TTL: the heartbeat renews them.
    await new Promise((r) => setTimeout(r, TTL_MS + 500));
    expect(await p.counts()).toMatchObject({ held: LIMIT, waiting: 5 });
    const watch = sampler(p);
    const killedAt = Date.now();
    victimA.child.kill("SIGKILL");
    victimB.child.kill("SIGKILL");
    const grants = await Promise.all([0, 1, 2].map((i) => survivor.next(answered(`q${i}`), 10_000)));
    const max = await watch.stop();
    expect(grants.map((g) => g.event)).toEqual(["granted", "granted", "granted"]);
    const backMs = Math.max(...grants.map((g) => g.at)) - killedAt;
    // Within one lease lifetime of the last beat (which came before the kill), plus a transition.
    expect(backMs).toBeLessThanOrEqual(TTL_MS + 250);
    expect(max.held).toBeLessThanOrEqual(LIMIT);
    expect(max.conns).toBeLessThanOrEqual(LIMIT);
    // The killed waiters were never granted: the survivor's 3 went straight in after the 3 expiries.
    const stats = (await admin`SELECT snapshot->'counters' AS counters FROM leasegate_pools WHERE pool = ${p.name}`)[0]!
      .counters as Record<string, number>;
    expect(stats).toMatchObject({ expired: 3 });
    figures.push(
      `3 holders + 2 waiters SIGKILLed: all 3 queued survivors granted ${backMs} ms after the kill (TTL ${TTL_MS} ms), max held ${max.held}/${LIMIT}, max connections ${max.conns}`,
    );
  }, 30_000);

  it("before: with no heartbeat and a 30 s TTL the killed holders' slots stay taken, and the survivors time out", async () => {
    const p = pool();
    const [victimA, victimB, survivor] = await Promise.all([p.start(), p.start(), p.start()]);
    await fill(p, victimA, victimB, survivor, { ttlMs: 30_000, heartbeatMs: 0 }, 2500);
    const killedAt = Date.now();
    victimA.child.kill("SIGKILL");
    victimB.child.kill("SIGKILL");
    const answers = await Promise.all([0, 1, 2].map((i) => survivor.next(answered(`q${i}`), 10_000)));
    expect(answers.map((a) => (a.event === "failed" ? a.code : a.event))).toEqual([
      "ACQUIRE_TIMEOUT",
      "ACQUIRE_TIMEOUT",
      "ACQUIRE_TIMEOUT",
    ]);
    // The dead processes' waiters left the queue (their LISTEN connection died); the slots did not come back.
    expect(await p.counts()).toMatchObject({ held: LIMIT, waiting: 0 });
    figures.push(
      `before (no heartbeat, 30 s TTL): ${LIMIT} slots still held ${Date.now() - killedAt} ms after the kill, 3 survivors timed out`,
    );
  }, 30_000);

  it("a caller that gives up (AbortSignal) leaves the queue at once; the slot goes to the next waiter, not to it", async () => {
    const sql = postgres(url, { max: 3, onnotice: () => {} });
    const name = `${RUN}-${++seq}`;
    const coordinator = new PostgresCoordinator({ sql, pool: name, config: { ...DEFAULT_CONFIG, limit: 1 } });
    try {
      const leases = new Leases(coordinator);
      const first = await leases.acquire();
      const started = Date.now();
      const gaveUp = leases.acquire({ waitMs: 5000, signal: AbortSignal.timeout(200) });
      const next = leases.acquire({ waitMs: 5000, holder: "next" });
      await expect(gaveUp).rejects.toMatchObject({ name: "TimeoutError" });
      const rejectedMs = Date.now() - started;
      await expect.poll(async () => (await coordinator.stats()).waiting, { timeout: 1000, interval: 10 }).toBe(1);
      const withdrawnMs = Date.now() - started;
      await leases.release(first);
      expect((await next).holder).toBe("next");
      const s = await coordinator.stats();
      expect(s).toMatchObject({ held: 1, waiting: 0, counters: { granted: 2, cancelled: 1 } });
      expect(rejectedMs).toBeLessThan(400);
      figures.push(
        `an aborted waiter rejected after ${rejectedMs} ms (signal at 200 ms), its row gone by ${withdrawnMs} ms`,
      );
    } finally {
      await coordinator.close();
      await sql.end();
    }
  });
});
