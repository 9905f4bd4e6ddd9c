/**
 * The pitches Worker under `wrangler dev` (the coordinator Durable Object, Hyperdrive's local mode)
 * in front of a private Postgres cluster, for the learned-limit runs in real workerd: the cluster
 * with an `app` role and the example's tables, the Worker with the given vars, its operator stats,
 * and a stop that takes wrangler, its workerd and the cluster down.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { migrate, seed } from "../../examples/pitches/src/schema.ts";
import type { OperatorStats } from "../../src/core/index.ts";
import { until } from "./helpers.ts";
import { type PrivateCluster, freePort, privateCluster } from "./learned-limit-pg.ts";

export interface LearnedLimitWorker {
  readonly pg: PrivateCluster;
  /** A superuser session on the cluster. */
  readonly admin: postgres.Sql;
  /** The Worker's origin, `http://127.0.0.1:port`. */
  readonly base: string;
  /** The operator stats (`/__coordinator/stats`). */
  stats(): Promise<OperatorStats>;
  /** What wrangler and the Worker printed so far. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts the cluster and the Worker, and waits until the Worker answers its operator stats.
 *
 * @example
 * const w = await learnedLimitWorker({ maxConnections: 16, superuserReserved: 3, token: "t", vars: { LEASE_LIMIT: "auto" } });
 */
export async function learnedLimitWorker(options: {
  maxConnections: number;
  superuserReserved: number;
  token: string;
  vars: Record<string, string>;
}): Promise<LearnedLimitWorker> {
  const pg = await privateCluster(options.maxConnections, options.superuserReserved);
  const admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
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
  const base = `http://127.0.0.1:${port}`;
  const persistDir = mkdtempSync(join(tmpdir(), "leasegate-learned-worker-"));
  const vars = { ...options.vars, DEBUG_TOKEN: options.token, SLOW_QUERY_MS: "60000" };
  const args = ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector)];
  args.push("--persist-to", persistDir, "--show-interactive-dev-session=false");
  args.push(...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`]));
  const wrangler: ChildProcess = spawn("wrangler", args, {
    env: {
      ...process.env,
      CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: `postgres://app:leasegate@127.0.0.1:${pg.port}/postgres`,
      WRANGLER_SEND_METRICS: "false",
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let output = "";
  wrangler.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  wrangler.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const auth = { authorization: `Bearer ${options.token}` };
  const stop = async () => {
    if (wrangler.pid && wrangler.exitCode === null) {
      const exited = new Promise((r) => wrangler.once("exit", r));
      process.kill(-wrangler.pid, "SIGTERM"); // its own process group: wrangler and its workerd
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    }
    rmSync(persistDir, { recursive: true, force: true });
    await admin.end({ timeout: 1 });
    pg.remove();
  };
  try {
    await until(
      async () => {
        if (wrangler.exitCode !== null) throw new Error(`wrangler dev exited early:\n${output.slice(-2000)}`);
        return await fetch(`${base}/__coordinator/stats`, { headers: auth }).then(
          (r) => r.status,
          () => 0,
        );
      },
      (status) => status === 200,
      40_000,
      200,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    pg,
    admin,
    base,
    output: () => output,
    stop,
    async stats() {
      const r = await fetch(`${base}/__coordinator/stats`, { headers: auth });
      if (r.status !== 200) throw new Error(`stats answered ${r.status}: ${await r.text()}`);
      return (await r.json()) as OperatorStats;
    },
  };
}
