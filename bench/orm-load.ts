/**
 * 60 concurrent requests to a Worker of examples/kysely-prisma under `wrangler dev`, its leased
 * connections logging in as a role with `CONNECTION LIMIT` (Hyperdrive's local mode passes the
 * login through), while a superuser connection counts that role's backends in pg_stat_activity
 * every ~5 ms. Reports the answers (status, code, Retry-After) and the most backends seen at once.
 * Run it in a folder where the example is installed and generated (`npm install`, `npx prisma generate`):
 *
 *   node bench/orm-load.ts <example folder> kysely|prisma [port]
 *
 * Env: DATABASE_URL (superuser; default the local cluster), ORM_LOAD_LIMIT (default 2),
 * ORM_LOAD_REQUESTS (default 60).
 */
import { spawn } from "node:child_process";
import postgres from "postgres";

const [folder, orm, port = "18601"] = process.argv.slice(2);
if (!folder || (orm !== "kysely" && orm !== "prisma")) {
  console.error("usage: node bench/orm-load.ts <example folder> kysely|prisma [port]");
  process.exit(2);
}
const limit = Number(process.env.ORM_LOAD_LIMIT ?? "2");
const requests = Number(process.env.ORM_LOAD_REQUESTS ?? "60");
const adminUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const admin = postgres(adminUrl, { max: 2, onnotice: () => {} });
const role = `orm_load_${Date.now().toString(36)}`;
await admin.unsafe(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT ${limit}`);
await admin.unsafe("CREATE TABLE IF NOT EXISTS orm_notes (id serial PRIMARY KEY, body text NOT NULL)");
await admin.unsafe(`GRANT ALL ON orm_notes TO ${role}`);
const url = new URL(adminUrl);
url.username = role;
url.password = "unused"; // Hyperdrive's local mode wants one; trust auth ignores it.

const wrangler = spawn(
  "npx",
  [
    "wrangler",
    "dev",
    "-c",
    `wrangler.${orm}.toml`,
    "--ip",
    "127.0.0.1",
    "--port",
    port,
    "--show-interactive-dev-session=false",
    "--var",
    `LEASE_LIMIT:${limit}`,
    "--var",
    "LEASE_MAX_QUEUE:20",
    "--var",
    "LEASE_WAIT_MS:3000",
  ],
  {
    cwd: folder,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: url.toString() },
  },
);
let log = "";
wrangler.stdout.on("data", (d) => (log += d));
wrangler.stderr.on("data", (d) => (log += d));
const base = `http://127.0.0.1:${port}`;

try {
  const readyBy = Date.now() + 60_000;
  for (;;) {
    const ok = await fetch(`${base}/notes`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) break;
    if (Date.now() > readyBy) throw new Error(`wrangler dev did not answer on ${base}:\n${log.slice(-2000)}`);
    await sleep(250);
  }
  let peak = 0;
  let samples = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const [row] =
        await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${role} AND backend_type = 'client backend'`;
      peak = Math.max(peak, row!.n as number);
      samples++;
      await sleep(5);
    }
  })();
  const started = Date.now();
  const answers = await Promise.all(
    Array.from({ length: requests }, async () => {
      const response = await fetch(`${base}/notes`);
      const body = (await response.json()) as { error?: { code: string } };
      return { status: response.status, code: body.error?.code, retryAfter: response.headers.get("retry-after") };
    }),
  );
  const ms = Date.now() - started;
  await sleep(100);
  sampling = false;
  await sampler;
  const counts: Record<string, number> = {};
  for (const a of answers) {
    const key = `${a.status}${a.code ? ` ${a.code}` : ""}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  const unhinted = answers.filter((a) => a.status === 503 && !(Number(a.retryAfter) > 0)).length;
  console.log(
    `${orm} under wrangler dev on :${port}, ${requests} concurrent GET /notes, LEASE_LIMIT=${limit}, role CONNECTION LIMIT ${limit}: ` +
      `${JSON.stringify(counts)} in ${ms} ms; 503 without Retry-After: ${unhinted}; peak ${peak} backends in ${samples} samples`,
  );
  if (peak > limit || unhinted > 0) process.exitCode = 1;
} finally {
  // wrangler and its workerd: the process group this script started.
  if (wrangler.pid) process.kill(-wrangler.pid, "SIGTERM");
  await sleep(500);
  await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${role}`;
  await sleep(200);
  await admin.unsafe(`REVOKE ALL ON orm_notes FROM ${role}`);
  await admin.unsafe(`DROP ROLE IF EXISTS ${role}`);
  await admin.end({ timeout: 1 });
}
