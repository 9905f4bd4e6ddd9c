/**
 * `LEASE_LIMIT=auto` on Workers, in real workerd: the pitches Worker under `wrangler dev` (the
 * coordinator Durable Object, Hyperdrive's local mode) in front of a private Postgres cluster with
 * `max_connections` 16. Requests learn the limit in `waitUntil`; other clients come and go. The lease
 * block (`LEASE_BLOCK=4`) and reserved slots (`LEASE_RESERVED=2`) run under the learned limit.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, seed } from "../../examples/pitches/src/schema.ts";
import type { OperatorStats } from "../../src/core/index.ts";
import { until } from "./helpers.ts";
import { loadWithOthers } from "./learned-limit-load.ts";
import { type PrivateCluster, freePort, privateCluster } from "./learned-limit-pg.ts";

const MAX_CONNECTIONS = 16;
const SUPERUSER_RESERVED = 3;
const HEADROOM = 2;
const INTERVAL_MS = 250;
const TOKEN = "learn-workerd-token";
const APP = "learn-workerd";

let pg: PrivateCluster;
let admin: postgres.Sql;
let wrangler: ChildProcess | undefined;
let persistDir = "";
let output = "";
let base = "";

async function stats(): Promise<OperatorStats> {
  const r = await fetch(`${base}/__coordinator/stats`, { headers: { authorization: `Bearer ${TOKEN}` } });
  if (r.status !== 200) throw new Error(`stats answered ${r.status}: ${await r.text()}`);
  return (await r.json()) as OperatorStats;
}

beforeAll(async () => {
  pg = await privateCluster(MAX_CONNECTIONS, SUPERUSER_RESERVED);
  admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
  await admin.unsafe("CREATE ROLE app LOGIN; GRANT ALL ON SCHEMA public TO app");
  const app = postgres(pg.url("app"), { max: 1, onnotice: () => {} });
  try {
    await migrate(app);
    await seed(app);
  } finally {
    await app.end();
  }
  const port = await freePort();
  const inspector = await freePort();
  base = `http://127.0.0.1:${port}`;
  persistDir = mkdtempSync(join(tmpdir(), "leasegate-learn-workerd-"));
  const vars = {
    DEBUG_TOKEN: TOKEN,
    LEASE_LIMIT: "auto",
    LEASE_HEADROOM: String(HEADROOM),
    LEASE_LEARN_INTERVAL_MS: String(INTERVAL_MS),
    LEASE_WAIT_MS: "10000",
    LEASE_POOL: "learned",
    // The lease block and reserved slots compose with a learned limit (a fixed count clamped to it).
    LEASE_BLOCK: "4",
    LEASE_RESERVED: "2",
    APPLICATION_NAME: APP,
    SLOW_QUERY_MS: "60000",
  };
  wrangler = spawn(
    "wrangler",
    [
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(port),
      "--inspector-port",
      String(inspector),
      "--persist-to",
      persistDir,
      "--show-interactive-dev-session=false",
      ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`]),
    ],
    {
      env: {
        ...process.env,
        CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: `postgres://app:leasegate@127.0.0.1:${pg.port}/postgres`,
        WRANGLER_SEND_METRICS: "false",
      },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    },
  );
  wrangler.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  wrangler.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const deadline = Date.now() + 40_000;
  for (;;) {
    if (wrangler.exitCode !== null) throw new Error(`wrangler dev exited early:\n${output.slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`wrangler dev did not answer in time:\n${output.slice(-2000)}`);
    const r = await fetch(`${base}/__coordinator/stats`, { headers: { authorization: `Bearer ${TOKEN}` } }).catch(
      () => null,
    );
    if (r?.status === 200) break;
    await new Promise((r) => setTimeout(r, 200));
  }
}, 90_000);

afterAll(async () => {
  if (wrangler?.pid && wrangler.exitCode === null) {
    const exited = new Promise((r) => wrangler!.once("exit", r));
    process.kill(-wrangler.pid, "SIGTERM"); // its own process group: wrangler and its workerd
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
  }
  if (persistDir) rmSync(persistDir, { recursive: true, force: true });
  await admin?.end({ timeout: 1 });
  pg?.remove();
});

describe("LEASE_LIMIT=auto in workerd (wrangler dev), max_connections 16", () => {
  it("a request learns the limit in waitUntil; the cron and an operator learn; a load with others coming and going never meets 53300", async () => {
    // The first request finds no learning and learns in waitUntil (its own lease does not wait for it).
    expect((await fetch(`${base}/api/pitches/trending?limit=1`)).status).toBe(200);
    const { value: learned } = await until(stats, (s) => s.limitSource === "learned", 10_000, 50);
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
        const sql = postgres(pg.url("app"), {
          max: 1,
          onnotice: () => {},
          connection: { application_name: "someone-else" },
        });
        await sql`SELECT 1`;
        return sql;
      }),
    );
    const r = await fetch(`${base}/__coordinator/learn`, {
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
    const before = (await stats()).learned!.learnedAt;
    expect((await fetch(`${base}/cdn-cgi/local/scheduled`)).status).toBe(200);
    const afterCron = await stats();
    expect(afterCron.learned!.learnedAt).toBeGreaterThan(before);
    expect(afterCron.reconciliation).not.toBeNull();

    const statuses = new Map<number, number>();
    const report = await loadWithOthers({
      call: async () => {
        const res = await fetch(`${base}/api/pitches/trending?limit=5`);
        const body = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status !== 200)
          throw Object.assign(new Error(body), { code: /"code":"(\w+)"/.exec(body)?.[1] ?? `HTTP ${res.status}` });
      },
      limit: async () => (await stats()).limit,
      url: pg.url("app"),
      admin,
      scope: { kind: "server", limit: MAX_CONNECTIONS - SUPERUSER_RESERVED },
      headroom: HEADROOM,
      durationMs: 8000,
      callers: 10,
      othersMax: 4,
      stepMs: 400,
    });
    console.log(
      `workerd, max_connections ${MAX_CONNECTIONS}, interval ${INTERVAL_MS} ms: ${JSON.stringify({ ...report, statuses: Object.fromEntries(statuses), refusedInLog: pg.refused() })}`,
    );
    expect(report.requests).toBeGreaterThan(50);
    expect(report.failedOther).toEqual({});
    expect(report.failed53300).toBe(0);
    expect(report.othersRefused53300).toBe(0);
    // The server's own count: no connection refused, the Worker's retried ones included.
    expect(pg.refused()).toBe(0);
    expect(report.peak).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    expect(report.limits.changes).toBeGreaterThan(2);
  }, 60_000);
});
