import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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

/** `run`, without blocking: installs in separate folders go side by side. */
function runAsync(command: string, args: string[], cwd: string): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env: process.env, stdio: ["ignore", "pipe", "pipe"], timeout: 240_000 });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    child.on("error", (e) => resolve({ status: null, output: `${output}\n${e}` }));
    child.on("close", (status) => resolve({ status, output }));
  });
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

/**
 * Copies `examples/<name>` into a fresh folder with the tarball as `leasegate.tgz`, and installs it.
 * `seed`: an example installed before lends its packages (hard links, no copy), and npm adds and
 * removes only what differs — the packages it leaves are the ones a fresh install makes (but for the
 * `node` package's install-time download, whose binary it already holds), in less time. The seed's
 * record of its tree (`node_modules/.package-lock.json`) is not lent: npm reads the folder as it is,
 * and installs side by side never write through a shared file.
 */
async function installExample(name: string, seed?: string): Promise<void> {
  const app = join(work, name);
  cpSync(join(root, "examples", name), app, {
    recursive: true,
    filter: (src) => !/node_modules|[/\\]dist$|[/\\]\.wrangler$|\.tgz$|[/\\]src[/\\]generated$/.test(src),
  });
  cpSync(packed(), join(app, "leasegate.tgz"));
  if (seed) {
    expect(run("cp", ["-al", join(work, seed, "node_modules"), join(app, "node_modules")], work).status).toBe(0);
    rmSync(join(app, "node_modules", ".package-lock.json"));
  }
  const install = await runAsync("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline"], app);
  expect(install.status, `npm install in ${name}\n${install.output}`).toBe(0);
}

/**
 * Every example, installed before the first test: the first from nothing, the others seeded from it
 * (before its own tests write anything under it) and installed side by side.
 */
beforeAll(async () => {
  await installExample("worker-app");
  await Promise.all(
    ["plain-worker", "plain-worker-pg", "hono-drizzle", "kysely-prisma"].map((name) =>
      installExample(name, "worker-app"),
    ),
  );
}, 600_000);
const installed = (name: string): string => join(work, name);

const installedVersion = (app: string, name: string): string =>
  JSON.parse(readFileSync(join(app, "node_modules", name, "package.json"), "utf8")).version;
const database = () =>
  withPassword(process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
const plain = (output: string) => output.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"), "");

// A string found in each driver's own code and nowhere else (not in leasegate, not in the other drivers).
const DRIVER_MARKERS = { postgres: "UNDEFINED_VALUE", pg: "pg-cloudflare", neon: "poolQueryViaFetch" } as const;
type DriverName = keyof typeof DRIVER_MARKERS;

/**
 * Bundles a one-route Worker on one driver entry with `wrangler deploy --dry-run` inside `app`
 * (where the tarball and the drivers are installed) and returns the bundle's text and size.
 */
function bundle(app: string, driver: DriverName): void {
  const dir = join(app, "bundles", driver);
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "index.ts"),
    [
      `import { driver } from "leasegate/${driver}";`,
      `import { ConnectionCoordinator, type WorkerPoolEnv, reconcileOnSchedule, workerPool } from "leasegate/workers";`,
      "export { ConnectionCoordinator };",
      "export default {",
      "  fetch: async (_r: Request, env: WorkerPoolEnv, ctx: ExecutionContext) => Response.json(await workerPool(env, ctx, { driver }).db.query('SELECT 1')),",
      "  scheduled: reconcileOnSchedule({ driver }),",
      "};",
    ].join("\n"),
  );
  writeFileSync(
    join(dir, "wrangler.toml"),
    [
      `name = "bundle-${driver}"`,
      'main = "index.ts"',
      'compatibility_date = "2026-11-01"',
      'compatibility_flags = ["nodejs_compat"]',
      "[[durable_objects.bindings]]",
      'name = "COORDINATOR_DO"',
      'class_name = "ConnectionCoordinator"',
      "[[migrations]]",
      'tag = "v1"',
      'new_sqlite_classes = ["ConnectionCoordinator"]',
    ].join("\n"),
  );
  const out = join(dir, "out");
  const build = run("npx", ["wrangler", "deploy", "--dry-run", "--outdir", out], dir);
  expect(build.status, build.output).toBe(0);
  const text = readFileSync(join(out, "index.js"), "utf8");
  const upload = /Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/.exec(plain(build.output));
  const pkg = { postgres: "postgres", pg: "pg", neon: "@neondatabase/serverless" }[driver];
  // The sizes users would deploy, for the record (the test's output).
  console.log(
    `bundle leasegate/${driver} (${pkg}@${installedVersion(app, pkg)}): ${upload?.[1]} KiB (gzip ${upload?.[2]} KiB)`,
  );
  expect(Number(upload?.[1])).toBeGreaterThan(0);
  expect(text).toContain("ConnectionCoordinator");
  expect(text, `the ${driver} Worker bundles its driver`).toContain(DRIVER_MARKERS[driver]);
  for (const other of Object.keys(DRIVER_MARKERS) as DriverName[]) {
    if (other !== driver)
      expect(text.includes(DRIVER_MARKERS[other]), `the ${driver} Worker bundles ${other}`).toBe(false);
  }
}

describe("the published package", () => {
  it("packs, installs into the example Worker, and passes the example's own tests in workerd", () => {
    // The library only: no example app, no tests, no benchmarks in what users install.
    const listing = run("tar", ["-tzf", packed()], work);
    expect(listing.status, listing.output).toBe(0);
    const files = listing.output.split("\n").filter(Boolean);
    expect(files.filter((f) => /^package\/(examples|test|bench|scripts|docs)\//.test(f))).toEqual([]);
    expect(
      files.filter((f) => /pitches|src\/db\/schema\.ts|src\/worker\.ts|main-(node|deno)|node-listener/.test(f)),
    ).toEqual([]);
    expect(files).toEqual(
      expect.arrayContaining(["package/src/http/operator.ts", "package/local/index.ts", "package/src/workers/pool.ts"]),
    );
    // The drivers are the user's: optional peers, never dependencies of leasegate.
    const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
    expect(manifest.dependencies ?? {}).toEqual({});
    for (const name of ["postgres", "pg", "@neondatabase/serverless"])
      expect(manifest.peerDependenciesMeta[name]).toEqual({ optional: true });
    const app = installed("worker-app");
    expect(installedVersion(app, "postgres")).toMatch(/^4\./);
    expect(existsSync(join(app, "node_modules", "pg"))).toBe(false);
    expect(existsSync(join(app, "node_modules", "@neondatabase", "serverless"))).toBe(false);

    // Node consumers: the entries load from dist/.
    const node = run(
      "node",
      [
        "--input-type=module",
        "-e",
        "const l = await import('leasegate/local'); const r = await import('leasegate'); const h = await import('leasegate/http'); const p = await import('leasegate/postgres'); if (typeof l.PostgresCoordinator !== 'function' || typeof l.localPool !== 'function' || typeof r.Leases !== 'function' || typeof r.Database !== 'function' || typeof h.operatorHandler !== 'function' || p.driver.name !== 'postgres') process.exit(3);",
      ],
      app,
    );
    expect(node.status, node.output).toBe(0);
    // A driver that is not installed fails at start in one line naming the package to install.
    const missing = run(
      "node",
      [
        "--input-type=module",
        "-e",
        "const { localPool } = await import('leasegate/local'); await localPool({ DATABASE_CLIENT: 'pg', COORDINATOR: 'off' }).catch((e) => { console.log(e.code + ' ' + e.message); process.exit(4); });",
      ],
      app,
    );
    expect(missing.status, missing.output).toBe(4);
    expect(missing.output).toContain("INVALID_CONFIG The database driver `pg` is not installed: run `npm install pg`");

    // The README's Node and Deno quick starts, as written, in this `"type": "module"` folder.
    const quick = {
      DATABASE_URL: process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
      LEASE_POOL: `quickstart-${process.pid}`,
    };
    cpSync(join(root, "docs", "snippets", "node-quickstart.ts"), join(app, "main.ts"));
    const onNode = run("node", ["main.ts"], app, quick);
    expect(onNode.status, onNode.output).toBe(0);
    expect(onNode.output).toContain("one: 1");
    cpSync(join(root, "docs", "snippets", "deno-quickstart.ts"), join(app, "deno-main.ts"));
    const deno = join(root, "node_modules", ".bin", "deno");
    const onDeno = run(
      deno,
      ["run", "--allow-net", "--allow-env", "--allow-read", "--allow-sys", "deno-main.ts"],
      app,
      quick,
    );
    expect(onDeno.status, onDeno.output).toBe(0);
    expect(onDeno.output).toContain("one: 1");

    const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output)).toMatch(/Tests\s+2 passed \(2\)/);
  }, 300_000);

  it("installs the plain-Worker example with postgres.js 4.x and 3.4.x: tsc and its workerd tests pass with both", () => {
    const app = installed("plain-worker");
    // The latest (the example's own range), then the oldest the peer range allows, in the same folder.
    for (const [version, spec] of [
      ["4.", undefined],
      ["3.4.5", "postgres@3.4.5"],
    ] as const) {
      if (spec) {
        const swap = run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", spec], app);
        expect(swap.status, swap.output).toBe(0);
      }
      expect(installedVersion(app, "postgres").startsWith(version), installedVersion(app, "postgres")).toBe(true);
      // Its `npm test` is `tsc --noEmit && vitest run`: the types users get, then the Worker against the real Postgres.
      const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
      expect(test.status, `postgres@${installedVersion(app, "postgres")}\n${test.output}`).toBe(0);
      expect(plain(test.output)).toMatch(/Tests\s+4 passed \(4\)/);
      // Only postgres.js is installed here: a Worker on it bundles (and needs) no other driver.
      bundle(app, "postgres");
    }
  }, 400_000);

  it("bundles a Worker with only the driver it uses (postgres.js, pg, Neon) with wrangler deploy --dry-run", () => {
    const app = join(work, "plain-worker");
    const added = run(
      "npm",
      ["install", "--no-audit", "--no-fund", "--prefer-offline", "pg@^8.13", "@neondatabase/serverless@^1"],
      app,
    );
    expect(added.status, added.output).toBe(0);
    // With every driver installed, each Worker still bundles only the one it imports.
    for (const driver of Object.keys(DRIVER_MARKERS) as DriverName[]) bundle(app, driver);
  }, 300_000);

  it("installs the plain-Worker example on node-postgres with @types/pg: tsc and its workerd tests pass, and it bundles pg alone", () => {
    const app = installed("plain-worker-pg");
    expect(existsSync(join(app, "node_modules", "postgres"))).toBe(false);
    // Its `npm test` is `tsc --noEmit && vitest run`: the pg.Client typed by @types/pg, then the Worker against the real Postgres.
    const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output)).toMatch(/Tests\s+4 passed \(4\)/);
    bundle(app, "pg");
  }, 400_000);

  it("installs into the Hono + Drizzle example, whose types check against the tarball's declarations and whose tests pass in workerd", () => {
    const app = installed("hono-drizzle");
    // Its `npm test` is `tsc --noEmit && vitest run`: the types users get, then the Worker against the real Postgres.
    const test = run("npm", ["test"], app, { EXAMPLE_DATABASE_URL: database() });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output)).toMatch(/Tests\s+7 passed \(7\)/);
  }, 300_000);

  it("installs the Kysely + Prisma example: a generated client, its types, both Workers in workerd, both Node scripts, and bundles with only their own ORM", () => {
    const app = installed("kysely-prisma");
    // Its `npm test` is `prisma generate && tsc --noEmit && vitest run` for each Worker. Generating needs
    // no engine binary, but Prisma's CLI first fetches the schema engine (for migrations) from
    // binaries.prisma.sh, which this machine cannot reach: any existing file stands in, never run.
    const test = run("npm", ["test"], app, {
      EXAMPLE_DATABASE_URL: database(),
      PRISMA_SCHEMA_ENGINE_BINARY: "/bin/false",
    });
    expect(test.status, test.output).toBe(0);
    expect(plain(test.output).match(/Tests\s+3 passed \(3\)/g)).toHaveLength(2);
    for (const line of plain(test.output).match(/(kysely|prisma): 60 concurrent at limit 2: .*/g) ?? [])
      console.log(line);
    // The same front doors on Node, each connection leased from the local adapter.
    const local = {
      DATABASE_URL: process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
      LEASE_POOL: `orm-example-${process.pid}`,
    };
    for (const orm of ["kysely", "prisma"] as const) {
      const script = run("node", [`scripts/${orm}.ts`], app, local);
      expect(script.status, script.output).toBe(0);
      expect(script.output).toMatch(new RegExp(`${orm}: wrote note \\d+`));
    }
    // Each Worker bundles its ORM and node-postgres, and no other ORM or driver.
    const ORMS = { kysely: "Kysely", prisma: "PrismaClient", drizzle: "drizzle-orm" } as const;
    for (const orm of ["kysely", "prisma"] as const) {
      const out = join(app, `out-${orm}`);
      const build = run("npx", ["wrangler", "deploy", "--dry-run", "-c", `wrangler.${orm}.toml`, "--outdir", out], app);
      expect(build.status, build.output).toBe(0);
      const upload = /Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/.exec(plain(build.output));
      console.log(`bundle of the ${orm} Worker (with node-postgres): ${upload?.[1]} KiB (gzip ${upload?.[2]} KiB)`);
      const text = readFileSync(join(out, `${orm}-worker.js`), "utf8");
      expect(text).toContain("ConnectionCoordinator");
      expect(text, `the ${orm} Worker bundles node-postgres`).toContain(DRIVER_MARKERS.pg);
      for (const other of ["postgres", "neon"] as const)
        expect(text.includes(DRIVER_MARKERS[other]), `the ${orm} Worker bundles ${other}`).toBe(false);
      expect(text, `the ${orm} Worker bundles ${orm}`).toContain(ORMS[orm]);
      for (const [name, marker] of Object.entries(ORMS))
        if (name !== orm) expect(text.includes(marker), `the ${orm} Worker bundles ${name}`).toBe(false);
    }
  }, 400_000);

  it("bundles the demo Worker for production with wrangler deploy --dry-run", () => {
    const out = join(work, "demo-bundle");
    const build = run("wrangler", ["deploy", "--dry-run", "--outdir", out], root);
    expect(build.status, build.output).toBe(0);
    const bundle = readFileSync(join(out, "worker.js"), "utf8");
    expect(bundle).toContain("ConnectionCoordinator");
    expect(existsSync(join(out, "worker.js"))).toBe(true);
  }, 120_000);
});
