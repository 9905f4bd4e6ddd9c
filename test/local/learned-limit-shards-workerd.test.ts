/**
 * `LEASE_LIMIT=auto` with `LEASE_SHARDS=3` and `LEASE_BLOCK=4` in real workerd: the pitches Worker under `wrangler dev`
 * in front of a private Postgres cluster with `max_connections` 16. The pool's root (the object
 * named after the pool) learns the limit and shares it among the three shard objects by demand;
 * other clients come and go. Ports from `LEASEGATE_TEST_PORTS` when set (else any free ones).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, seed } from "../../examples/pitches/src/schema.ts";
import type { OperatorStats } from "../../src/core/index.ts";
import { until } from "./helpers.ts";
import { loadWithOthers } from "./learned-limit-load.ts";
import { type PrivateCluster, privateCluster } from "./learned-limit-pg.ts";

const MAX_CONNECTIONS = 16;
const SUPERUSER_RESERVED = 3;
const HEADROOM = 2;
const INTERVAL_MS = 250;
const SHARDS = 3;
// Each isolate's lease block keeps up to this many leases for its next requests (they count in the shares).
const BLOCK = 4;
const TOKEN = "learn-shards-token";

let pg: PrivateCluster;
let admin: postgres.Sql;
let wrangler: ChildProcess | undefined;
let persistDir = "";
let output = "";
let base = "";
let nextPort = Number(process.env.LEASEGATE_TEST_PORTS ?? 0);

async function freePort(): Promise<number> {
  if (nextPort > 0) return nextPort++;
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

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
  persistDir = mkdtempSync(join(tmpdir(), "leasegate-learn-shards-"));
  const vars = {
    DEBUG_TOKEN: TOKEN,
    LEASE_LIMIT: "auto",
    LEASE_SHARDS: String(SHARDS),
    LEASE_BLOCK: String(BLOCK),
    LEASE_HEADROOM: String(HEADROOM),
    LEASE_LEARN_INTERVAL_MS: String(INTERVAL_MS),
    LEASE_WAIT_MS: "10000",
    LEASE_POOL: "learned-shards",
    APPLICATION_NAME: "learn-shards",
    SLOW_QUERY_MS: "60000",
  };
  const args = ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector)];
  args.push("--persist-to", persistDir, "--show-interactive-dev-session=false");
  args.push(...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`]));
  wrangler = spawn("wrangler", args, {
    env: {
      ...process.env,
      CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: `postgres://app:leasegate@127.0.0.1:${pg.port}/postgres`,
      WRANGLER_SEND_METRICS: "false",
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  wrangler.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  wrangler.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  await until(
    async () => {
      if (wrangler!.exitCode !== null) throw new Error(`wrangler dev exited early:\n${output.slice(-2000)}`);
      return await fetch(`${base}/__coordinator/stats`, { headers: { authorization: `Bearer ${TOKEN}` } }).then(
        (r) => r.status,
        () => 0,
      );
    },
    (status) => status === 200,
    40_000,
    200,
  );
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

describe(`LEASE_LIMIT=auto with LEASE_SHARDS=${SHARDS} and LEASE_BLOCK=${BLOCK} in workerd (wrangler dev), max_connections 16`, () => {
  it("the root learns the limit and shares it among the shards; a load with others coming and going never meets 53300", async () => {
    expect((await fetch(`${base}/api/pitches/trending?limit=1`)).status).toBe(200);
    const { value: learned } = await until(stats, (s) => s.limitSource === "learned", 10_000, 50);
    const room = MAX_CONNECTIONS - SUPERUSER_RESERVED - learned.learned!.terms.othersOnServer - HEADROOM;
    expect(learned.limit).toBe(room);
    expect(learned.shares).toMatchObject({ limit: room, layout: { count: SHARDS, split: "demand" } });

    let sharesOver = 0;
    let samples = 0;
    let highest = learned.limit;
    const statuses = new Map<number, number>();
    const report = await loadWithOthers({
      call: async () => {
        const res = await fetch(`${base}/api/pitches/trending?limit=5`);
        const body = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status !== 200)
          throw Object.assign(new Error(body), { code: /"code":"(\w+)"/.exec(body)?.[1] ?? `HTTP ${res.status}` });
      },
      // The limit as the load sees it. The root's reserves never exceed a limit that was in force
      // (after a lower learning they shrink as the shards give slots back: no share grows meanwhile).
      limit: async () => {
        const s = await stats();
        highest = Math.max(highest, s.limit);
        samples++;
        if ((s.shares?.shards ?? []).reduce((a, x) => a + x.reserve, 0) > highest) sharesOver++;
        return s.limit;
      },
      url: pg.url("app"),
      admin,
      scope: { kind: "server", limit: MAX_CONNECTIONS - SUPERUSER_RESERVED },
      headroom: HEADROOM,
      durationMs: 8000,
      callers: 10,
      othersMax: 4,
      stepMs: 400,
    });
    const after = await stats();
    console.log(
      `workerd, LEASE_SHARDS ${SHARDS}, LEASE_BLOCK ${BLOCK}, max_connections ${MAX_CONNECTIONS}, interval ${INTERVAL_MS} ms: ${JSON.stringify({ ...report, statuses: Object.fromEntries(statuses), refusedInLog: pg.refused(), shares: after.shares?.shards.map((s) => [s.shard, s.share, s.demand]) })}`,
    );
    // Why a request failed, as the Worker logged it.
    for (const line of output
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
    expect(pg.refused()).toBe(0);
    expect(report.peak).toBeLessThanOrEqual(MAX_CONNECTIONS - SUPERUSER_RESERVED);
    expect(report.limits.changes).toBeGreaterThan(2);
    expect(samples).toBeGreaterThan(5);
    expect(sharesOver).toBe(0);
    // Every shard took part: each has an account at the root.
    expect(after.shares!.shards.map((s) => s.shard)).toEqual(expect.arrayContaining(["0", "1", "2"]));
  }, 60_000);
});
