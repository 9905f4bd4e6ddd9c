import { env } from "cloudflare:workers";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LeaseClient, Leases } from "../../src/client/leases.ts";
import { ShardedLeases, createIsolateShards, shardName } from "../../src/client/sharded-leases.ts";
import { type PoolStats, isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { type Sampled, type Sampler, startSampler } from "../limit/sampler.ts";

/**
 * A rollout that changes the shard layout 1 → 4 → 2 on a live pool (real workerd, the real
 * objects, real connections through Hyperdrive's local mode). Old and new clients run side by side
 * as a deploy has them: clients of one object (`LEASE_SHARDS=1`, the object named after the pool),
 * then of 4 shards, then of 2, each group starting before the one before it stops. The operator
 * changes the layout on the pool's root; no client's setting splits anything. Throughout, every
 * object's held leases are sampled (their sum never exceeds the limit, nor do the root's reserves)
 * and so is `pg_stat_activity` (the leased backends never exceed the limit). LEASE_LIMIT is 3 here.
 */
const LIMIT = 3;
const POOL = `rollout-${Date.now().toString(36)}`;
const APP = `lg-rollout-${Date.now().toString(36)}`;
const PHASE_MS = 1500;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const stub = (name: string) => env.COORDINATOR_DO.getByName(name);
const objects = [POOL, ...Array.from({ length: 4 }, (_, i) => shardName(POOL, i, 4))];

interface Group {
  name: string;
  ok: number;
  refused: Record<string, number>;
  stop: boolean;
  done: Promise<void>;
}

/** `n` loops of one leased statement each (20 ms under the lease), until stopped. */
function run(name: string, n: number, leases: () => LeaseClient): Group {
  const group: Group = { name, ok: 0, refused: {}, stop: false, done: Promise.resolve() };
  const config = databaseConfig({ HYPERDRIVE: env.HYPERDRIVE, APPLICATION_NAME: APP });
  const loops = Array.from({ length: n }, async (_, i) => {
    const db = new Database({ name: APP, driver: openDriver(config), leases: leases(), config, log: () => {} });
    while (!group.stop) {
      try {
        await db.query("SELECT pg_sleep(0.02)", [], { holder: `${name}-${i}`, deadlineMs: 4000 });
        group.ok++;
      } catch (error) {
        const code = isLeaseError(error) ? error.code : String((error as { code?: unknown }).code ?? error);
        group.refused[code] = (group.refused[code] ?? 0) + 1;
        await sleep(20);
      }
    }
  });
  group.done = Promise.all(loops).then(() => {});
  return group;
}

function sharded(count: number): () => LeaseClient {
  // One isolate's state per group, as a Worker keeps it at module scope; stubs per client.
  const isolate = createIsolateShards({ shards: count });
  const names = Array.from({ length: count }, (_, i) => shardName(POOL, i, count));
  return () => new ShardedLeases({ coordinators: names.map(stub), isolate, waitMs: 4000 });
}

describe("a 1 → 4 → 2 shard rollout with old and new clients side by side (real workerd, limit 3)", () => {
  let admin: pg.Client;
  let sampler: Sampler;
  let seen: Sampled;
  let sampling = true;
  let samples = 0;
  let peakHeld = 0;
  let peakReserved = 0;
  let peakShares = 0;
  const overLimit: string[] = [];
  const groups: Group[] = [];

  beforeAll(async () => {
    admin = new pg.Client({
      connectionString: env.HYPERDRIVE.connectionString,
      application_name: "lg-rollout-sampler",
    });
    admin.on("error", () => {});
    await admin.connect();
    sampler = await startSampler(async (text, params) => (await admin.query(text, params)).rows, { app: APP }, 5);
    const watch = (async () => {
      while (sampling) {
        // All objects at once: a slot can only move between them through the root, a round trip apart.
        const all: PoolStats[] = await Promise.all(objects.map((n) => stub(n).stats()));
        const held = all.reduce((a, s) => a + s.held, 0);
        const accounts = all[0]!.shares?.shards ?? [];
        const reserved = accounts.reduce((a, s) => a + s.reserve, 0);
        const shares = accounts.reduce((a, s) => a + s.share, 0);
        if (held > LIMIT || reserved > LIMIT || shares > LIMIT)
          overLimit.push(`held ${all.map((s) => s.held).join("+")} reserved ${reserved} shares ${shares}`);
        peakHeld = Math.max(peakHeld, held);
        peakReserved = Math.max(peakReserved, reserved);
        peakShares = Math.max(peakShares, shares);
        samples++;
        await sleep(3);
      }
    })();

    // Phase 1: the pool is one object; three old clients use it.
    const old = run("old", 3, () => new Leases(stub(POOL), { waitUntil: () => {} }));
    groups.push(old);
    await sleep(PHASE_MS);
    // Phase 2: the operator plans 4 shards; new clients use them while the old ones still run.
    expect(await stub(POOL).setLayout({ count: 4, split: "demand" })).toMatchObject({ ok: true });
    const four = run("four", 3, sharded(4));
    groups.push(four);
    await sleep(PHASE_MS);
    // Phase 3: 2 shards; a newer deploy's clients start, the old ones stop.
    expect(await stub(POOL).setLayout({ count: 2, split: "demand" })).toMatchObject({ ok: true });
    const two = run("two", 3, sharded(2));
    groups.push(two);
    await sleep(PHASE_MS / 2);
    old.stop = true;
    await sleep(PHASE_MS / 2);
    // Phase 4: the 4-shard clients stop; the 2-shard ones run on alone.
    four.stop = true;
    await sleep(PHASE_MS);
    two.stop = true;
    await Promise.all(groups.map((g) => g.done));
    await sleep(300);
    sampling = false;
    await watch;
    seen = await sampler.stop();
  }, 60_000);

  afterAll(async () => {
    console.log(
      `[limit] shard rollout 1 → 4 → 2 at limit ${LIMIT}: ${groups.map((g) => `${g.name} ${g.ok} ok ${JSON.stringify(g.refused)}`).join(", ")};` +
        ` ${samples} object samples, peak held ${peakHeld}, peak reserved ${peakReserved}, peak shares ${peakShares};` +
        ` pg_stat_activity peak ${seen?.peak()} over ${seen?.samples.length} samples`,
    );
    await sampler?.stop().catch(() => {});
    await admin?.end().catch(() => {});
  });

  it("never holds more leases than the limit across all objects, nor reserves or shares more", () => {
    expect(samples).toBeGreaterThan(20);
    expect(overLimit).toEqual([]);
    expect(peakHeld).toBeLessThanOrEqual(LIMIT);
  });

  it("never shows more leased backends than the limit in pg_stat_activity", () => {
    expect(seen.samples.length).toBeGreaterThan(20);
    expect(seen.peak()).toBeGreaterThan(0);
    expect(seen.peak()).toBeLessThanOrEqual(LIMIT);
  });

  it("serves every group of clients while its layout rolls in or out", () => {
    for (const g of groups) expect(g.ok, g.name).toBeGreaterThan(0);
  });

  it("ends with every object empty and the root's shares following the new layout", async () => {
    await expect
      .poll(async () => (await Promise.all(objects.map((n) => stub(n).stats()))).reduce((a, s) => a + s.held, 0), {
        timeout: 3000,
      })
      .toBe(0);
    const root = await stub(POOL).stats();
    expect(root.shares!.layout).toEqual({ count: 2, split: "demand" });
    expect(root.shares!.shards.reduce((a, s) => a + s.reserve, 0)).toBeLessThanOrEqual(LIMIT);
  });
});
