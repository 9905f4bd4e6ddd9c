/**
 * `npm test`: brings up a Postgres (the local cluster, started if it is down; embedded PGlite when
 * none is installed), creates and migrates the test database, then runs every suite: the core and
 * local adapter on Node, and the Worker and Durable Object in real workerd, then the packed package
 * in the examples beside the type check and the linter, the browser and fault suites, the local
 * adapter on Deno (`deno task test`) and on Bun (`bun test test/bun/`) and the two bench smokes.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import postgres from "postgres";
import { migrate, seed } from "../examples/pitches/src/schema.ts";
import { ensureDatabase, redact, withPassword } from "./database.ts";

// Parallel runs on one server (several checkouts) each take their own database.
const TEST_DB = process.env.LEASEGATE_TEST_DB ?? "leasegate_test";
if (!/^[a-z_][a-z0-9_]{0,62}$/.test(TEST_DB))
  throw new Error(`LEASEGATE_TEST_DB must be a plain identifier, got ${TEST_DB}`);
const server = await ensureDatabase(process.env.DATABASE_URL);
let url = server.url;

if (server.kind !== "embedded") {
  // A database of its own, so tests never touch the developer's data.
  const admin = postgres(server.url, { max: 1, onnotice: () => {} });
  try {
    const [exists] = await admin`SELECT 1 FROM pg_database WHERE datname = ${TEST_DB}`;
    if (!exists) await admin.unsafe(`CREATE DATABASE ${TEST_DB}`);
  } finally {
    await admin.end();
  }
  const u = new URL(server.url);
  u.pathname = `/${TEST_DB}`;
  url = u.toString();
}

const sql = postgres(url, { max: 1, onnotice: () => {} });
try {
  await migrate(sql);
  await seed(sql);
} finally {
  await sql.end();
}
console.log(`test database: ${server.kind} ${redact(url)}`);

const env = {
  ...process.env,
  LEASEGATE_TEST_DATABASE_URL: url,
  LEASEGATE_TEST_HYPERDRIVE_URL: withPassword(url),
  LEASEGATE_TEST_APP_NAME: `${TEST_DB}-app`,
};
// The node suite runs its files one at a time, so timed tests keep their CPU; the packed-package
// test (npm installs, tsc, wrangler bundles, the examples' own workerd tests) runs apart, later.
const suites = [
  { name: "node", args: ["run", "--config", "vitest.config.ts", "--exclude", "test/package/**"] },
  { name: "workerd", args: ["run", "--config", "vitest.workers.config.ts"] },
];
const packageSuite = { name: "package", args: ["run", "--config", "vitest.package.config.ts"] };
const tail = [{ name: "browser", args: ["run", "--config", "vitest.browser.config.ts"] }];
// Fault injection restarts a private Postgres cluster of its own (never the shared one), so it
// needs a Postgres installation; with only the embedded database it cannot run, and says so.
const hasInitdb =
  existsSync("/usr/lib/postgresql") &&
  readdirSync("/usr/lib/postgresql").some((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`));
if (hasInitdb) tail.push({ name: "faults", args: ["run", "--config", "vitest.faults.config.ts"] });
else console.log("fault suite not run: it needs a Postgres installation (initdb under /usr/lib/postgresql)");
// Extra arguments (a file filter, say) go to every suite.
const extra = process.argv.slice(2);
mkdirSync("test-artifacts", { recursive: true });

let passed = 0;
let failed = 0;
let broken = false;

type Outcome = { status: number | null; stdout: string; stderr: string };
/** Runs `command` to its end; `keep` holds its output back (to print whole), else it goes straight out. */
function run(command: string, args: readonly string[], env: NodeJS.ProcessEnv, keep: boolean): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env, stdio: keep ? ["ignore", "pipe", "pipe"] : "inherit" });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d) => (stdout += d));
    child.stderr?.on("data", (d) => (stderr += d));
    child.on("error", (e) => resolve({ status: null, stdout, stderr: `${stderr}${e}\n` }));
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

/** A vitest suite, counted from its JSON report; a run without one, or with a non-zero exit, is broken. */
async function vitest(suite: { name: string; args: string[] }, keep = false): Promise<void> {
  const report = `test-artifacts/vitest-${suite.name}.json`;
  const args = [...suite.args, "--reporter=default", "--reporter=json", `--outputFile.json=${report}`, ...extra];
  const outcome = await run("vitest", args, env, keep);
  process.stdout.write(outcome.stdout);
  process.stderr.write(outcome.stderr);
  try {
    const result = JSON.parse(readFileSync(report, "utf8")) as { numPassedTests: number; numFailedTests: number };
    passed += result.numPassedTests;
    failed += result.numFailedTests;
  } catch {
    broken = true;
  }
  if (outcome.status !== 0) broken = true;
}

for (const suite of suites) await vitest(suite);

// The packed-package test runs beside everything after it: its own timed checks run in its
// examples' workerd, and the suites beside it wait seconds where they wait at all. Its output is
// held back and printed whole when it ends. The embedded database answers every suite from this one
// process, a query at a time, so with it the package test still runs alone.
const packageRun = vitest(packageSuite, true);
if (server.kind === "embedded") await packageRun;
// Strict types and the linter (Biome: lint rules and formatting): a finding fails the run like a
// failing test. They wait on no clock, so they too run beside the package test.
for (const [name, command, args] of [
  ["typecheck", "tsc", ["--noEmit", "-p", "."]],
  ["lint", "biome", ["check", "."]],
] as const) {
  const check = await run(command, args, process.env, false);
  if (check.status === 0) continue;
  failed++;
  broken = true;
  console.log(`${name}: FAILED`);
}
for (const suite of tail) await vitest(suite);

// The local adapter and server on Deno (deno from npm), counted like the vitest suites.
const deno = await run("deno", ["task", "test"], { ...env, NO_COLOR: "1" }, true);
process.stdout.write(deno.stdout);
process.stderr.write(deno.stderr);
const denoSummary = /(\d+) passed[^\n]*?(\d+) failed/.exec(deno.stdout);
if (denoSummary) {
  passed += Number(denoSummary[1]);
  failed += Number(denoSummary[2]);
} else {
  broken = true;
}
if (deno.status !== 0) broken = true;
// The local adapter, Bun's SQL client as a driver and the example app on Bun (bun from npm), counted alike.
const bun = await run("bun", ["test", "--conditions=source", "test/bun/"], { ...env, NO_COLOR: "1" }, true);
process.stdout.write(bun.stdout);
process.stderr.write(bun.stderr);
const bunSummary = /(\d+) pass\s+(\d+) fail/.exec(`${bun.stdout}${bun.stderr}`);
if (bunSummary) {
  passed += Number(bunSummary[1]);
  failed += Number(bunSummary[2]);
} else {
  broken = true;
}
if (bun.status !== 0) broken = true;

// Benchmarks are not tests: CI only checks that the bench harness starts and runs one short
// iteration (inside workerd, no wrk or PgBouncer needed). Counts as one test.
const benchSmoke = await run("node", ["--expose-gc", "bench/run.ts", "--smoke"], env, true);
process.stderr.write(benchSmoke.stderr);
if (benchSmoke.status === 0) passed++;
else failed++;
console.log(`bench smoke: ${benchSmoke.status === 0 ? "ok" : "FAILED"}`);
// The production-shaped topology (coordinator and Worker processes apart, a delay injected between
// them) in short phases against the test database: no PgBouncer, no wrk. Counts as one test.
const topologySmoke = await run("node", ["bench/topology.ts", "--smoke"], { ...env, DATABASE_URL: url }, true);
process.stderr.write(topologySmoke.stderr);
if (topologySmoke.status === 0) passed++;
else failed++;
console.log(`topology bench smoke: ${topologySmoke.status === 0 ? "ok" : "FAILED"}`);
await packageRun;
await server.stop();
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(broken || failed > 0 || passed === 0 ? 1 : 0);
