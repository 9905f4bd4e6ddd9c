/**
 * `LEASE_LIMIT=auto` with `LEASE_SHARDS=3` and `LEASE_BLOCK=4` in real workerd: the pitches Worker under `wrangler dev`
 * in front of a private Postgres cluster with `max_connections` 16. The pool's root (the object
 * named after the pool) learns the limit and shares it among the three shard objects by demand;
 * other clients come and go. Ports from `LEASEGATE_TEST_PORTS` when set (else any free ones).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { until } from "./helpers.ts";
import { loadWithOthers } from "./learned-limit-load.ts";
import { type LearnedLimitWorker, learnedLimitWorker } from "./learned-limit-worker.ts";

const MAX_CONNECTIONS = 16;
const SUPERUSER_RESERVED = 3;
const HEADROOM = 2;
const INTERVAL_MS = 250;
const SHARDS = 3;
// Each isolate's lease block keeps up to this many leases for its next requests (they count in the shares).
const BLOCK = 4;
const TOKEN = "learn-shards-token";

let worker: LearnedLimitWorker;

beforeAll(async () => {
  worker = await learnedLimitWorker({
    maxConnections: MAX_CONNECTIONS,
    superuserReserved: SUPERUSER_RESERVED,
    token: TOKEN,
    vars: {
      LEASE_LIMIT: "auto",
      LEASE_SHARDS: String(SHARDS),
      LEASE_BLOCK: String(BLOCK),
      LEASE_HEADROOM: String(HEADROOM),
      LEASE_LEARN_INTERVAL_MS: String(INTERVAL_MS),
      LEASE_WAIT_MS: "10000",
      LEASE_POOL: "learned-shards",
      APPLICATION_NAME: "learn-shards",
    },
  });
}, 90_000);

afterAll(async () => {
  await worker?.stop();
});

describe(`LEASE_LIMIT=auto with LEASE_SHARDS=${SHARDS} and LEASE_BLOCK=${BLOCK} in workerd (wrangler dev), max_connections 16`, () => {
  it("the root learns the limit and shares it among the shards; a load with others coming and going never meets 53300", async () => {
    expect((await fetch(`${worker.base}/api/pitches/trending?limit=1`)).status).toBe(200);
    const { value: learned } = await until(worker.stats, (s) => s.limitSource === "learned", 10_000, 50);
    const room = MAX_CONNECTIONS - SUPERUSER_RESERVED - learned.learned!.terms.othersOnServer - HEADROOM;
    expect(learned.limit).toBe(room);
    expect(learned.shares).toMatchObject({ limit: room, layout: { count: SHARDS, split: "demand" } });

    let sharesOver = 0;
    let samples = 0;
    let highest = learned.limit;
    const statuses = new Map<number, number>();
    const report = await loadWithOthers({
      call: async () => {
        const res = await fetch(`${worker.base}/api/pitches/trending?limit=5`);
        const body = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status !== 200)
          throw Object.assign(new Error(body), { code: /"code":"(\w+)"/.exec(body)?.[1] ?? `HTTP ${res.status}` });
      },
      // The limit as the load sees it. The root's reserves never exceed a limit that was in force
      // (after a lower learning they shrink as the shards give slots back: no share grows meanwhile).
      limit: async () => {
        const s = await worker.stats();
        highest = Math.max(highest, s.limit);
        samples++;
        if ((s.shares?.shards ?? []).reduce((a, x) => a + x.reserve, 0) > highest) sharesOver++;
        return s.limit;
      },
      url: worker.pg.url("app"),
      admin: worker.admin,
      scope: { kind: "server", limit: MAX_CONNECTIONS - SUPERUSER_RESERVED },
      headroom: HEADROOM,
      durationMs: 8000,
      callers: 10,
      othersMax: 4,
      stepMs: 400,
    });
    const after = await worker.stats();
    console.log(
      `workerd, LEASE_SHARDS ${SHARDS}, LEASE_BLOCK ${BLOCK}, max_connections ${MAX_CONNECTIONS}, interval ${INTERVAL_MS} ms: ${JSON.stringify({ ...report, statuses: Object.fromEntries(statuses), refusedInLog: worker.pg.refused(), shares: after.shares?.shards.map((s) => [s.shard, s.share, s.demand]) })}`,
    );
    // Why a request failed, as the Worker logged it.
    for (const line of worker
      .output()
      .split("\n")
      .filter((l) => l.includes('"database_error"'))
      .slice(0, 5))
      console.log(line);
    expect(report.requests).toBeGreaterThan(50);
    // Known and not yet explained (docs/scaling.md): on this loaded machine a holder's own clock now
    // and then runs out before the claim of a grant from a shard's queue succeeds (LEASE_LOST, 1–2
    // of ~200 requests in 3 of 9 runs). Anything else, or more of it, fails.
    const { LEASE_LOST: lost = 0, ...otherFailures } = report.failedOther;
    expect(otherFailures).toEqual({});
    expect(lost).toBeLessThanOrEqual(Math.ceil(report.requests * 0.02));
    expect(report.failed53300).toBe(0);
    expect(report.othersRefused53300).toBe(0);
    expect(worker.pg.refused()).toBe(0);
    expect(report.peak).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    expect(report.limits.changes).toBeGreaterThan(2);
    expect(samples).toBeGreaterThan(5);
    expect(sharesOver).toBe(0);
    // Every shard took part: each has an account at the root.
    expect(after.shares!.shards.map((s) => s.shard)).toEqual(expect.arrayContaining(["0", "1", "2"]));
  }, 60_000);
});
