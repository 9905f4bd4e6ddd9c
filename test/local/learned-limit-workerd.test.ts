/**
 * `LEASE_LIMIT=auto` on Workers, in real workerd: the pitches Worker under `wrangler dev` (the
 * coordinator Durable Object, Hyperdrive's local mode) in front of a private Postgres cluster with
 * `max_connections` 16. Requests learn the limit in `waitUntil`; other clients come and go. The lease
 * block (`LEASE_BLOCK=4`) and reserved slots (`LEASE_RESERVED=2`) run under the learned limit.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { until } from "./helpers.ts";
import { loadWithOthers } from "./learned-limit-load.ts";
import { type LearnedLimitWorker, learnedLimitWorker } from "./learned-limit-worker.ts";

const MAX_CONNECTIONS = 16;
const SUPERUSER_RESERVED = 3;
const HEADROOM = 2;
const INTERVAL_MS = 250;
const TOKEN = "learn-workerd-token";
const APP = "learn-workerd";

let worker: LearnedLimitWorker;

beforeAll(async () => {
  worker = await learnedLimitWorker({
    maxConnections: MAX_CONNECTIONS,
    superuserReserved: SUPERUSER_RESERVED,
    token: TOKEN,
    vars: {
      LEASE_LIMIT: "auto",
      LEASE_HEADROOM: String(HEADROOM),
      LEASE_LEARN_INTERVAL_MS: String(INTERVAL_MS),
      LEASE_WAIT_MS: "10000",
      LEASE_POOL: "learned",
      // The lease block and reserved slots compose with a learned limit (a fixed count clamped to it).
      LEASE_BLOCK: "4",
      LEASE_RESERVED: "2",
      APPLICATION_NAME: APP,
    },
  });
}, 90_000);

afterAll(async () => {
  await worker?.stop();
});

describe("LEASE_LIMIT=auto in workerd (wrangler dev), max_connections 16", () => {
  it("a request learns the limit in waitUntil; the cron and an operator learn; a load with others coming and going never meets 53300", async () => {
    // The first request finds no learning and learns in waitUntil (its own lease does not wait for it).
    expect((await fetch(`${worker.base}/api/pitches/trending?limit=1`)).status).toBe(200);
    const { value: learned } = await until(worker.stats, (s) => s.limitSource === "learned", 10_000, 50);
    expect(learned.learned!.bound).toBe("server");
    expect(learned.learned!.terms).toMatchObject({
      maxConnections: MAX_CONNECTIONS,
      superuserReserved: SUPERUSER_RESERVED,
      headroom: HEADROOM,
    });
    expect(learned.limit).toBe(MAX_CONNECTIONS - SUPERUSER_RESERVED - learned.learned!.terms.othersOnServer - HEADROOM);

    // An operator's request learns now.
    const others = await Promise.all(
      [1, 2].map(async () => {
        const sql = postgres(worker.pg.url("app"), {
          max: 1,
          onnotice: () => {},
          connection: { application_name: "someone-else" },
        });
        await sql`SELECT 1`;
        return sql;
      }),
    );
    const r = await fetch(`${worker.base}/__coordinator/learn`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(r.status).toBe(200);
    const answer = (await r.json()) as {
      limit: number;
      limitSource: string;
      learned: { terms: { othersOnServer: number } };
    };
    expect(answer.limitSource).toBe("learned");
    expect(answer.limit).toBe(MAX_CONNECTIONS - SUPERUSER_RESERVED - answer.learned.terms.othersOnServer - HEADROOM);
    for (const sql of others) await sql.end({ timeout: 0 });

    // The cron (wrangler dev runs the scheduled handler on this path) learns, then reconciles.
    const before = (await worker.stats()).learned!.learnedAt;
    expect((await fetch(`${worker.base}/cdn-cgi/local/scheduled`)).status).toBe(200);
    const afterCron = await worker.stats();
    expect(afterCron.learned!.learnedAt).toBeGreaterThan(before);
    expect(afterCron.reconciliation).not.toBeNull();

    const statuses = new Map<number, number>();
    const report = await loadWithOthers({
      call: async () => {
        const res = await fetch(`${worker.base}/api/pitches/trending?limit=5`);
        const body = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status !== 200)
          throw Object.assign(new Error(body), { code: /"code":"(\w+)"/.exec(body)?.[1] ?? `HTTP ${res.status}` });
      },
      limit: async () => (await worker.stats()).limit,
      url: worker.pg.url("app"),
      admin: worker.admin,
      scope: { kind: "server", limit: MAX_CONNECTIONS - SUPERUSER_RESERVED },
      headroom: HEADROOM,
      durationMs: 8000,
      callers: 10,
      othersMax: 4,
      stepMs: 400,
    });
    console.log(
      `workerd, max_connections ${MAX_CONNECTIONS}, interval ${INTERVAL_MS} ms: ${JSON.stringify({ ...report, statuses: Object.fromEntries(statuses), refusedInLog: worker.pg.refused() })}`,
    );
    expect(report.requests).toBeGreaterThan(50);
    expect(report.failedOther).toEqual({});
    expect(report.failed53300).toBe(0);
    expect(report.othersRefused53300).toBe(0);
    // The server's own count: no connection refused, the Worker's retried ones included.
    expect(worker.pg.refused()).toBe(0);
    expect(report.peak).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    expect(report.limits.changes).toBeGreaterThan(2);
  }, 60_000);
});
