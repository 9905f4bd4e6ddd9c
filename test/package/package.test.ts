import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { withPassword } from "../../scripts/database.ts";

// What a user gets: the packed tarball, installed into a fresh project. A broken export, a file
// missing from `files`, or a declaration that does not resolve fails here.
const root = join(import.meta.dirname, "..", "..");
const work = mkdtempSync(join(tmpdir(), "leasegate-package-"));
// Removing the installed examples can take long on a busy machine.
afterAll(() => rmSync(work, { recursive: true, force: true }), 120_000);

function run(command: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", env: { ...process.env, ...env }, timeout: 240_000 });
  return { status: result.status, output: `${result.stdout}\n${result.stderr}` };
}

/** Packs the package once for every test here: the tarball users would install. */
let tarball: string | undefined;
function packed(): string {
  if (tarball) return tarball;
  const pack = run("npm", ["pack", "--pack-destination", work], root);
  expect(pack.status, pack.output).toBe(0);
  tarball = join(work, readdirSync(work).find((f) => f.endsWith(".tgz"))!);
  return tarball;
}

/** Copies `examples/<name>` into a fresh folder with the tarball as `leasegate.tgz`, and installs it. */
function installExample(name: string): string {
  const app = join(work, name);
  cpSync(join(root, "examples", name), app, {
    recursive: true,
    filter: (src) => !/node_modules|[/\\]dist$|[/\\]\.wrangler$|\.tgz$/.test(src),
  });
  cpSync(packed(), join(app, "leasegate.tgz"));
  const install = run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline"], app);
  expect(install.status, install.output).toBe(0);
  return app;
}

const database = () => withPassword(process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
const plain = (output: string) => output.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"), "");

describe("the published package", () => {
  it("packs, installs into the example Worker, and passes the example's own tests in workerd", () => {
    // The library only: no example app, no tests, no benchmarks in what users install.
    const listing = run("tar", ["-tzf", packed()], work);
    expect(listing.status, listing.output).toBe(0);
    const files = listing.output.split("\n").filter(Boolean);
    expect(files.filter((f) => /^package\/(examples|test|bench|scripts|docs)\//.test(f))).toEqual([]);
    expect(files.filter((f) => /pitches|src\/db\/schema\.ts|src\/worker\.ts|main-(node|deno)|node-listener/.test(f))).toEqual([]);
    expect(files).toEqual(expect.arrayContaining(["package/src/http/operator.ts", "package/local/index.ts", "package/src/workers/pool.ts"]));
    const app = installExample("worker-app");
    const installed = JSON.parse(readFileSync(join(app, "node_modules", "leasegate", "package.json"), "utf8"));
    expect(installed.exports["./workers"]).toBeDefined();

    // Node consumers: the runtime-neutral entry and the Postgres-backed coordinator load from dist/.
    const node = run(
      "node",
      [
        "--input-type=module",
        "-e",
        "const l = await import('leasegate/local'); const r = await import('leasegate'); const h = await import('leasegate/http'); if (typeof l.PostgresCoordinator !== 'function' || typeof l.localPool !== 'function' || typeof r.Leases !== 'function' || typeof r.Database !== 'function' || typeof h.operatorHandler !== 'function') process.exit(3);",
      ],
      app,
    );
    expect(node.status, node.output).toBe(0);

    const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output)).toMatch(/Tests\s+2 passed \(2\)/);
  }, 300_000);

  it("installs into the Hono + Drizzle example, whose types check against the tarball's declarations and whose tests pass in workerd", () => {
    const app = installExample("hono-drizzle");
    // Its `npm test` is `tsc --noEmit && vitest run`: the types users get, then the Worker against the real Postgres.
    const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output)).toMatch(/Tests\s+7 passed \(7\)/);
  }, 300_000);

  it("bundles the demo Worker for production with wrangler deploy --dry-run", () => {
    const out = join(work, "demo-bundle");
    const build = run("wrangler", ["deploy", "--dry-run", "--outdir", out], root);
    expect(build.status, build.output).toBe(0);
    const bundle = readFileSync(join(out, "worker.js"), "utf8");
    expect(bundle).toContain("ConnectionCoordinator");
    expect(existsSync(join(out, "worker.js"))).toBe(true);
  }, 120_000);
});
