/**
 * `npm start`: check the settings and DATABASE_URL, migrate and seed the example schema, then run
 * the Worker under `wrangler dev` (real workerd, the Durable Object, Hyperdrive's local mode
 * pointed at DATABASE_URL or at an embedded PGlite) on 127.0.0.1:$PORT.
 */
import { spawn } from "node:child_process";
import postgres from "postgres";
import { preflight } from "../local/preflight.ts";
import { migrate, seed } from "../examples/pitches/src/schema.ts";
import { redact, startEmbedded, withPassword } from "./database.ts";

// A bad setting or an unreachable database ends the start here, in one line, before anything runs.
const failure = await preflight(process.env, {
  url: process.env.DATABASE_URL || undefined,
  hint: "unset DATABASE_URL to use the embedded database",
  worker: true,
});
if (failure) {
  console.error(failure.line);
  process.exit(1);
}

const port = process.env.PORT || "8787";
// DATABASE_URL when set; otherwise an embedded PGlite, so the demo needs no database installed.
const db = process.env.DATABASE_URL
  ? { url: process.env.DATABASE_URL, kind: "external" as const, stop: async () => {} }
  : await startEmbedded(Number(process.env.PGLITE_PORT ?? 0));

const sql = postgres(db.url, { max: 1, onnotice: () => {} });
try {
  await migrate(sql);
  const seeded = await seed(sql);
  console.log(`database: ${db.kind} ${redact(db.url)}${seeded ? `, seeded ${seeded} pitches` : ""}`);
} finally {
  await sql.end();
}

// Settings from the environment reach the Worker as vars; the rest keep wrangler.toml's values.
// Every LEASE_* and DB_* setting (README "Configuration") and these:
const passed = ["COORDINATOR", "DEBUG_TOKEN", "SLOW_QUERY_MS"];
const vars = Object.keys(process.env)
  .filter((name) => /^(LEASE|DB)_/.test(name) || passed.includes(name))
  .sort()
  .flatMap((name) => ["--var", `${name}:${process.env[name]}`]);

const wrangler = spawn(
  "wrangler",
  ["dev", "--ip", "127.0.0.1", "--port", port, "--show-interactive-dev-session=false", ...vars],
  {
    stdio: "inherit",
    env: { ...process.env, CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: withPassword(db.url) },
  },
);

// Stopping passes the signal to wrangler, which ends workerd and esbuild before it exits; then the
// embedded database stops and so does this process.
let stopping = false;
const stop = (signal: "SIGINT" | "SIGTERM") => {
  if (stopping) return;
  stopping = true;
  wrangler.kill(signal);
};
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => stop(signal));
// npm runs a script under `sh -c`, and passes a signal it gets (`timeout 60 npm start`: SIGTERM) to
// the shell only: a shell that ran this as its child would die of SIGTERM without passing it on and
// sit out SIGINT. So `npm start` is `exec node scripts/start.ts` (the shell becomes this process),
// and should this process be orphaned all the same (npm killed outright), it stops as on SIGTERM:
// wrangler and workerd never outlive the command that started them.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) stop("SIGTERM");
}, 200).unref();
wrangler.on("exit", async (code) => {
  await db.stop();
  process.exit(stopping ? 0 : (code ?? 1));
});
