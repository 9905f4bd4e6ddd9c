/**
 * `LEASE_LIMIT=auto` against a private Postgres cluster of its own (a temp directory, a free port)
 * with a small `max_connections`: the server's room is the bound, and a load with other clients
 * coming and going never meets `53300`.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import type { OperatorStats } from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";
import { leasedQuery, limitOf, loadWithOthers } from "./learned-limit-load.ts";
import { type PrivateCluster, privateCluster } from "./learned-limit-pg.ts";

const MAX_CONNECTIONS = 16;
const SUPERUSER_RESERVED = 3;
const HEADROOM = 2;

let pg: PrivateCluster;
let admin: postgres.Sql;
let appUrl = "";
const pools: LocalPool[] = [];

beforeAll(async () => {
  pg = await privateCluster(MAX_CONNECTIONS, SUPERUSER_RESERVED);
  admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
  // The application's role is not a superuser: the superuser slots are not its to take.
  await admin.unsafe("CREATE ROLE app LOGIN; GRANT ALL ON SCHEMA public TO app");
  appUrl = pg.url("app");
}, 60_000);

afterAll(async () => {
  for (const p of pools) await p.close();
  await admin?.end({ timeout: 1 });
  pg?.remove();
});

describe("LEASE_LIMIT=auto on a private cluster with max_connections 16", () => {
  it("learns the server's room, and a load with others coming and going never meets 53300", async () => {
    const p = await localPool({
      DATABASE_URL: appUrl,
      APPLICATION_NAME: "learn-cluster",
      LEASE_LIMIT: "auto",
      LEASE_HEADROOM: String(HEADROOM),
      LEASE_LEARN_INTERVAL_MS: "250",
      LEASE_WAIT_MS: "10000",
      SLOW_QUERY_MS: "60000",
    });
    pools.push(p);
    const s = (await p.operator!.stats()) as OperatorStats;
    const t = s.learned!.terms;
    expect(s.limitSource).toBe("learned");
    expect(s.learned!.bound).toBe("server");
    expect(t).toMatchObject({
      maxConnections: MAX_CONNECTIONS,
      superuserReserved: SUPERUSER_RESERVED,
      roleLimit: null,
    });
    // Others: the admin's connection and the coordinator's control (2) and LISTEN (1) connections.
    expect(t.othersOnServer).toBe(4);
    expect(s.limit).toBe(MAX_CONNECTIONS - SUPERUSER_RESERVED - 4 - HEADROOM);

    const report = await loadWithOthers({
      call: leasedQuery(p, appUrl, "learn-cluster"),
      limit: limitOf(p),
      url: appUrl,
      admin,
      scope: { kind: "server", limit: MAX_CONNECTIONS - SUPERUSER_RESERVED },
      headroom: HEADROOM,
      durationMs: 6000,
      callers: 12,
      othersMax: 4,
      stepMs: 300,
    });
    console.log(
      `max_connections ${MAX_CONNECTIONS} (${SUPERUSER_RESERVED} for superusers), headroom ${HEADROOM}, interval 250 ms: ${JSON.stringify(report)}`,
    );
    expect(report.requests).toBeGreaterThan(100);
    expect(report.failed53300).toBe(0);
    expect(report.failedOther).toEqual({});
    expect(report.othersRefused53300).toBe(0);
    expect(report.peak).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    // The server's own count of connections it refused: none.
    expect(pg.refused()).toBe(0);
    expect(report.limits.changes).toBeGreaterThan(2);
  }, 60_000);

  it("a learning while the database is down fails with DATABASE_UNAVAILABLE and the learned limit stays", async () => {
    for (const q of pools.splice(0)) await q.close();
    // Learns at start only (an hour's interval): what the stats show after the outage is what stayed.
    const p = await localPool({
      DATABASE_URL: appUrl,
      APPLICATION_NAME: "learn-cluster",
      LEASE_LIMIT: "auto",
      LEASE_LEARN_INTERVAL_MS: "3600000",
    });
    pools.push(p);
    const before = (await p.operator!.stats()) as OperatorStats;
    pg.stop();
    try {
      expect(await p.operator!.learn!()).toMatchObject({ ok: false, code: "DATABASE_UNAVAILABLE" });
    } finally {
      pg.start();
    }
    const after = (await p.operator!.stats()) as OperatorStats;
    expect(after.limit).toBe(before.limit);
    expect(after.learned).toEqual(before.learned);
    expect(after.learnFailure).toMatchObject({ code: "DATABASE_UNAVAILABLE" });
    // Why, and since when: the failure's code in the metrics, the age of the value that stayed.
    expect(after.learnedAgeMs).toBeGreaterThanOrEqual(after.learnFailure!.at - after.learned!.learnedAt);
    const metrics = formatMetrics("learn-cluster", after);
    expect(metrics).toMatch(
      /^leasegate_learn_failure_timestamp_seconds\{pool="learn-cluster",code="DATABASE_UNAVAILABLE"\} \d/m,
    );
    // The next learning that works clears it.
    expect(await p.operator!.learn!()).toMatchObject({ ok: true, limitSource: "learned", learnFailure: null });
    expect(((await p.operator!.stats()) as OperatorStats).learnFailure).toBeNull();
  }, 30_000);
});
