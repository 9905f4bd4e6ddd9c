import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { type PoolConfig, createPool } from "../../src/core/index.ts";
import { codeOf } from "../support/codes.ts";
import { localPools, url } from "./helpers.ts";

// Scheduling on the local adapter: the pool's state is reloaded from Postgres on every transition,
// so classes, tenants' turns and the adaptive limit must survive the round trip through the rows.
// Two coordinators (each with its own client, as two processes would have) share one pool.
const pools = localPools("sched", { limit: 2, maxQueue: 50, waitMs: 3000, leaseTtlMs: 10_000 });
const { clients } = pools;
const HOT = `leasegate_test_hot_${process.pid}`;

function pair(config: Partial<PoolConfig>, n = 2): PostgresCoordinator[] {
  const pool = pools.name();
  return Array.from({ length: n }, () => pools.coordinator(config, pool));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterAll(async () => {
  const sql = clients[0];
  if (sql) await sql`DROP TABLE IF EXISTS ${sql(HOT)}`;
  await pools.cleanup();
});

describe("PostgresCoordinator scheduling across coordinators", () => {
  it("grants a critical waiter before an earlier normal one, from reserved slots normal callers cannot use", async () => {
    const [a, b] = pair({ limit: 2, reserved: 1 }).map((c) => new Leases(c));
    const first = await a!.acquire({ holder: "a-normal" });
    // One slot is free, but it is reserved: a normal caller in the other process must wait.
    expect(await codeOf(b!.acquire({ holder: "b-now", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    const crit = await b!.acquire({ holder: "b-critical", priority: "critical", waitMs: 0 });
    const order: string[] = [];
    const normal = b!.acquire({ holder: "b-normal" }).then((l) => {
      order.push("normal");
      return l;
    });
    await sleep(50);
    const critical = a!.acquire({ holder: "a-critical", priority: "critical" }).then((l) => {
      order.push("critical");
      return l;
    });
    await sleep(50);
    expect((await a!.stats()).waiting).toBe(2);
    // The first free slot goes to the later critical waiter (held 1 < limit 2; normal needs < 1).
    await a!.release(first);
    const lc = await critical;
    expect(order).toEqual(["critical"]);
    await b!.release(crit);
    await a!.release(lc);
    const ln = await normal;
    expect(order).toEqual(["critical", "normal"]);
    await b!.release(ln);
  });

  it("keeps the batch cap from the leases' stored class, in another coordinator", async () => {
    const [a, b] = pair({ limit: 3, batchMax: 1 }).map((c) => new Leases(c));
    const batch = await a!.acquire({ holder: "a-batch", priority: "batch" });
    expect(await codeOf(b!.acquire({ holder: "b-batch", priority: "batch", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    const normal = await b!.acquire({ holder: "b-normal", waitMs: 0 });
    await a!.release(batch);
    const again = await b!.acquire({ holder: "b-batch", priority: "batch", waitMs: 0 });
    await b!.release(again);
    await b!.release(normal);
  });

  it("lets tenants take turns: a quiet tenant queued behind a burst is served second", async () => {
    // FIFO within a tenant: the burst's own order is checked too.
    const [a, b] = pair({ limit: 1, queue: "fifo" }).map((c) => new Leases(c));
    const held = await a!.acquire({ holder: "blocker" });
    const order: string[] = [];
    const take = (leases: Leases, tenant: string, name: string) =>
      leases.acquire({ holder: name, tenant }).then(async (l) => {
        order.push(name);
        await sleep(5);
        await leases.release(l);
      });
    const noisy = [1, 2, 3].map((i) => take(a!, "noisy", `noisy-${i}`));
    await sleep(80);
    const quiet = take(b!, "quiet", "quiet-1");
    await sleep(80);
    expect((await b!.stats()).waiting).toBe(4);
    await a!.release(held);
    await Promise.all([...noisy, quiet]);
    expect(order).toEqual(["noisy-1", "quiet-1", "noisy-2", "noisy-3"]);
  });

  it("shares the pause and the live limit across coordinators and keeps them in the pool's row", async () => {
    const [a, b] = pair({ limit: 2 });
    const la = new Leases(a!);
    expect(await a!.pause()).toMatchObject({ ok: true, paused: true, limit: 2, limitOverride: null });
    expect(await codeOf(new Leases(b!).acquire({ holder: "b", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    const waiting = la.acquire({ holder: "a", waitMs: 2000 });
    await sleep(50);
    expect((await b!.stats()).paused).toBe(true);
    expect(await b!.resume()).toMatchObject({ ok: true, paused: false });
    const granted = await waiting;
    expect(await b!.setLimit(1)).toMatchObject({ ok: true, limit: 1, limitOverride: 1 });
    // A coordinator started later with another configured limit keeps the operator's override.
    const late = pools.coordinator({ limit: 7 }, a!.pool);
    expect(await late.operatorStats()).toMatchObject({ limit: 1, limitOverride: 1, paused: false });
    expect(await codeOf(new Leases(b!).acquire({ holder: "b", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
    // `null` returns to the configured limit, which the coordinator started last wrote (as a redeploy).
    expect(await a!.setLimit(null)).toMatchObject({ ok: true, limit: 7, limitOverride: null });
    expect(await a!.setLimit(0)).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    await la.release(granted);
  });

  it("adaptive limit on real Postgres: shrinks while the database is slow, grows back to the maximum after", async () => {
    const LIMIT = 12;
    const FLOOR = 3;
    const CLIENTS = 16;
    const [coordinator] = pair({ limit: LIMIT, adaptive: { floor: FLOOR }, waitMs: 10_000, maxQueue: 100 }, 1);
    const leases = new Leases(coordinator!);
    const work = postgres(url, { max: CLIENTS, onnotice: () => {} });
    clients.push(work);
    await work`CREATE TABLE IF NOT EXISTS ${work(HOT)} (id int PRIMARY KEY, n bigint NOT NULL)`;
    await work`INSERT INTO ${work(HOT)} VALUES (1, 0) ON CONFLICT DO NOTHING`;
    // Warm the work connections, so connecting is not counted as query time.
    await Promise.all(Array.from({ length: CLIENTS }, () => work`SELECT 1`));

    type Phase = "fast" | "slow" | "fast again";
    let phase: Phase = "fast";
    let stop = false;
    const samples: Array<{ phase: Phase; at: number; queryMs: number; totalMs: number }> = [];
    const limits: Array<{ phase: Phase; at: number; limit: number }> = [];
    const start = Date.now();
    const client = async () => {
      while (!stop) {
        const p = phase;
        const t0 = performance.now();
        await leases.withLease(
          async () => {
            const t1 = performance.now();
            if (p === "slow") {
              // Lock contention: every query takes the same row lock and keeps it 4 ms, so the
              // database's latency grows with the number of queries let in at once.
              await work.begin(async (tx) => {
                await tx`SELECT n FROM ${tx(HOT)} WHERE id = 1 FOR UPDATE`;
                await tx`SELECT pg_sleep(0.004)`;
              });
            } else {
              await work`SELECT n FROM ${work(HOT)} WHERE id = 1`;
            }
            samples.push({
              phase: p,
              at: Date.now() - start,
              queryMs: performance.now() - t1,
              totalMs: performance.now() - t0,
            });
          },
          { holder: "adaptive-e2e" },
        );
      }
    };
    const watch = async () => {
      while (!stop) {
        limits.push({ phase, at: Date.now() - start, limit: (await coordinator!.stats()).effectiveLimit });
        await sleep(20);
      }
    };
    const running = [...Array.from({ length: CLIENTS }, client), watch()];
    await sleep(2000);
    phase = "slow";
    await sleep(4000);
    phase = "fast again";
    // Fast again until the limit is back at the maximum (bounded), then a little longer.
    const backBy = Date.now() + 6000;
    while (Date.now() < backBy && (limits.at(-1)?.limit ?? 0) < LIMIT) await sleep(50);
    await sleep(500);
    stop = true;
    await Promise.all(running);
    await work`DROP TABLE IF EXISTS ${work(HOT)}`;

    const pct = (xs: number[], q: number) => {
      const s = [...xs].sort((x, y) => x - y);
      return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
    };
    const report: Record<string, unknown> = {};
    for (const p of ["fast", "slow", "fast again"] as const) {
      const ls = limits.filter((l) => l.phase === p).map((l) => l.limit);
      const q = samples.filter((s) => s.phase === p);
      report[p] = {
        queries: q.length,
        limitMin: Math.min(...ls),
        limitMax: Math.max(...ls),
        limitLast: ls.at(-1),
        queryP50: +pct(
          q.map((s) => s.queryMs),
          0.5,
        ).toFixed(1),
        queryP99: +pct(
          q.map((s) => s.queryMs),
          0.99,
        ).toFixed(1),
        totalP50: +pct(
          q.map((s) => s.totalMs),
          0.5,
        ).toFixed(1),
        totalP99: +pct(
          q.map((s) => s.totalMs),
          0.99,
        ).toFixed(1),
      };
    }
    // The slow phase's first second (limit still high) against its last (limit shrunk).
    const slow = samples.filter((s) => s.phase === "slow");
    const slowStart = slow[0]?.at ?? 0;
    const slowEnd = slow.at(-1)?.at ?? 0;
    report["slow, first 1 s"] = {
      queryP50: +pct(
        slow.filter((s) => s.at < slowStart + 1000).map((s) => s.queryMs),
        0.5,
      ).toFixed(1),
    };
    report["slow, last 1 s"] = {
      queryP50: +pct(
        slow.filter((s) => s.at > slowEnd - 1000).map((s) => s.queryMs),
        0.5,
      ).toFixed(1),
    };
    // The limit over time, one sample per 250 ms: seconds, phase initial and effective limit.
    const timeline = limits.filter((l, i) => i === 0 || Math.floor(l.at / 250) !== Math.floor(limits[i - 1]!.at / 250));
    report.timeline = timeline
      .map((l) => `${(l.at / 1000).toFixed(2)}s ${l.phase[0]}${l.phase === "fast again" ? "'" : ""} ${l.limit}`)
      .join(", ");
    console.log(`adaptive limit ${LIMIT}, floor ${FLOOR}, ${CLIENTS} clients:\n${JSON.stringify(report, null, 1)}`);

    const slowLimits = limits.filter((l) => l.phase === "slow").map((l) => l.limit);
    // Noise alone (a GC pause, a busy core: a few slow samples) moves the fast phase's limit to 7–10
    // here; a sustained slowdown takes ~40 slow samples before the baseline catches up, and the
    // limit decays per sample to about half the maximum meanwhile (4–6 in every run here).
    expect(Math.min(...slowLimits)).toBeLessThanOrEqual(LIMIT / 2);
    expect(Math.min(...limits.map((l) => l.limit))).toBeGreaterThanOrEqual(FLOOR);
    expect(Math.max(...limits.map((l) => l.limit))).toBeLessThanOrEqual(LIMIT);
    // Back at the maximum once the database is fast again.
    expect(limits.some((l) => l.phase === "fast again" && l.limit === LIMIT)).toBe(true);
  }, 30_000);
});

describe("PostgresCoordinator on tables made by an earlier version", () => {
  it("adds the new columns in place and keeps the rows already there", async () => {
    const schema = `lg_old_${process.pid}`;
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    clients.push(admin);
    await admin.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema}`);
    // The first version's tables: no owner pid, no classes, tenants, pause, override or adaptive state.
    const fresh = createPool({ limit: 2, maxQueue: 10, waitMs: 1000, leaseTtlMs: 10_000 });
    await admin.unsafe(`
      CREATE TABLE ${schema}.leasegate_pools (pool text PRIMARY KEY, next_fence bigint NOT NULL DEFAULT 1, config jsonb NOT NULL,
        counters jsonb NOT NULL, waits jsonb NOT NULL, hold_ms_sum double precision NOT NULL DEFAULT 0, hold_count bigint NOT NULL DEFAULT 0);
      CREATE TABLE ${schema}.leasegate_leases (pool text NOT NULL, id text NOT NULL, fence bigint NOT NULL, holder text NOT NULL,
        granted_at bigint NOT NULL, expires_at bigint NOT NULL, PRIMARY KEY (pool, id));
      CREATE TABLE ${schema}.leasegate_waiters (pool text NOT NULL, id text NOT NULL, seq bigserial NOT NULL, holder text NOT NULL,
        enqueued_at bigint NOT NULL, deadline bigint NOT NULL, ttl_ms bigint NOT NULL, PRIMARY KEY (pool, id));
      INSERT INTO ${schema}.leasegate_pools (pool, next_fence, config, counters, waits)
        VALUES ('old', 41, '{}', '${JSON.stringify(fresh.counters)}', '${JSON.stringify(fresh.waits)}');
      INSERT INTO ${schema}.leasegate_leases VALUES ('old', 'aaaaaaaa-old-lease', 40, 'old-holder', ${Date.now()}, ${Date.now() + 60_000});`);
    const sql = postgres(url, { max: 3, onnotice: () => {}, connection: { search_path: schema } });
    clients.push(sql);
    const c = new PostgresCoordinator({
      sql,
      pool: "old",
      config: { limit: 2, maxQueue: 10, waitMs: 1000, leaseTtlMs: 10_000, reserved: 1 },
    });
    try {
      const leases = new Leases(c);
      expect((await c.stats()).leases.map((l) => l.holder)).toEqual(["old-holder"]);
      // The old lease holds the one normal slot; the reserved one is for critical callers only.
      expect(await codeOf(leases.acquire({ holder: "normal", waitMs: 0 }))).toBe("ACQUIRE_TIMEOUT");
      const critical = await leases.acquire({ holder: "critical", priority: "critical", tenant: "t1" });
      expect(critical.fence).toBe(41);
      expect(await c.pause()).toMatchObject({ ok: true, paused: true });
      expect(await c.revoke("aaaaaaaa")).toMatchObject({ ok: true, holder: "old-holder" });
      expect(await c.resume()).toMatchObject({ ok: true, paused: false });
      await leases.release(critical);
    } finally {
      await c.close();
      await admin.unsafe(`DROP SCHEMA ${schema} CASCADE`);
    }
  });
});
