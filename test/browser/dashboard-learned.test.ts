/**
 * The dashboard of a pool with `LEASE_LIMIT=auto`, in a real headless Chromium: the operator
 * handler of a `localPool` served by node:http on a free port, over the real Postgres, on a role
 * with `CONNECTION LIMIT 20`. The page must say where the limit comes from and why it is what it is.
 */
import { type Server, createServer } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import bundled from "@sparticuz/chromium";
import postgres from "postgres";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { ensureSchema } from "../../local/schema.ts";
import { createLearners } from "../../src/db/learn-limit.ts";
import { operatorHandler } from "../../src/http/operator.ts";

const TOKEN = "learned-dashboard-token";
const url = process.env.LEASEGATE_TEST_DATABASE_URL;
const tag = `${process.pid}_${Date.now().toString(36)}`;
const role = `lg_dash_${tag}`;
const RELAXED_FLAGS = new Set(["--disable-web-security", "--allow-running-insecure-content"]);
const OFFLINE_FLAGS = [
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

let admin: postgres.Sql;
let pool: LocalPool | undefined;
let other: postgres.Sql | undefined;
let server: Server | undefined;
let browser: Browser | undefined;
let chromiumDir = "";
let base = "";

/** The Chromium inside `@sparticuz/chromium`, unpacked into a folder of this run's own. */
async function launchChromium(): Promise<Browser> {
  if (process.env.CHROMIUM_PATH)
    return chromium.launch({
      executablePath: process.env.CHROMIUM_PATH,
      headless: true,
      args: ["--no-sandbox", ...OFFLINE_FLAGS],
    });
  chromiumDir = mkdtempSync(join(tmpdir(), "leasegate-chromium-"));
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = chromiumDir;
  let executablePath: string;
  try {
    executablePath = await bundled.executablePath();
  } finally {
    if (saved === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = saved;
  }
  const args = bundled.args.filter((flag) => !RELAXED_FLAGS.has(flag));
  for (const flag of OFFLINE_FLAGS) if (!args.includes(flag)) args.push(flag);
  return chromium.launch({ executablePath, headless: true, args });
}

beforeAll(async () => {
  if (!url) throw new Error("LEASEGATE_TEST_DATABASE_URL is unset: run this suite through `npm test`");
  admin = postgres(url, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT 20`);
  await ensureSchema(admin, `dash-${tag}-setup`, { limit: 1, maxQueue: 10, waitMs: 100, leaseTtlMs: 1000 });
  await createLearners(admin);
  await admin.unsafe(
    `GRANT SELECT, INSERT, UPDATE, DELETE ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners TO ${role}`,
  );
  await admin.unsafe(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
  const u = new URL(url);
  u.username = role;
  u.password = "";
  // One administrator's session of the same role: room taken.
  other = postgres(u.toString(), { max: 1, onnotice: () => {}, connection: { application_name: "psql" } });
  await other`SELECT 1`;
  pool = await localPool({
    DATABASE_URL: u.toString(),
    APPLICATION_NAME: `dash-${tag}`,
    LEASE_POOL: `dash-${tag}`,
    LEASE_LIMIT: "auto",
    LEASE_LEARN_INTERVAL_MS: "200",
  });
  const handle = operatorHandler({ controls: pool.operator, token: TOKEN, pool: "learned" });
  server = createServer(async (req, res) => {
    const body = req.method === "POST" ? await new Response(req as unknown as ReadableStream).text() : undefined;
    const response =
      (await handle(
        new Request(`http://127.0.0.1${req.url}`, {
          method: req.method,
          headers: req.headers as Record<string, string>,
          body,
        }),
      )) ?? new Response("", { status: 404 });
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  await pool?.close();
  await other?.end({ timeout: 0 });
  await admin`DELETE FROM leasegate_pools WHERE pool LIKE ${`dash-${tag}%`}`;
  await admin.unsafe(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`);
  for (let i = 0; i < 50; i++) {
    const [row] = await admin<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${role}`;
    if (row!.n === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await admin.unsafe(
    `REVOKE ALL ON leasegate_pools, leasegate_leases, leasegate_waiters, leasegate_learners FROM ${role}`,
  );
  // Its pools' registrations among the pools that learn: later pools must not split with them.
  await admin`DELETE FROM leasegate_learners WHERE role = ${role}`;
  await admin.unsafe(`REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ${role}`);
  await admin.unsafe(`DROP ROLE ${role}`);
  await admin.end();
  if (chromiumDir) rmSync(chromiumDir, { recursive: true, force: true });
});

describe("dashboard of a learned limit in headless Chromium", () => {
  it("says the limit is learned, from which term and why, and an operator's limit takes over", async () => {
    const page = await browser!.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    await page.goto(`${base}/__coordinator/#token=${TOKEN}&interval=200`);
    const why = page.locator("#limitWhy");
    // 20 − the psql session − the coordinator's control (2) and LISTEN (1) connections = 16; − headroom 2.
    await expect
      .poll(() => why.textContent(), { timeout: 10_000 })
      .toBe("limit 14: learned = room 16 (role: CONNECTION LIMIT 20 − others of the role 4) − headroom 2");
    expect(await why.getAttribute("data-source")).toBe("learned");
    expect(await page.locator("#limitTerms").textContent()).toContain("role limit20");
    // How old the learned value is, and how many pools share the room.
    expect(await page.locator("#limitTerms").textContent()).toMatch(/learned.* \(\d+ (ms|s) ago\)/);
    expect(await page.locator("#limitTerms").textContent()).toMatch(/pools that learn\d/);

    await page.fill("#limit", "5");
    await page.click("#setLimit");
    await expect.poll(() => why.textContent(), { timeout: 5000 }).toBe("limit 5: set by an operator (learned: 14)");
    await page.click("#resetLimit");
    await expect.poll(() => why.getAttribute("data-source"), { timeout: 5000 }).toBe("learned");
    await page.click("#learn");
    await expect.poll(() => page.locator("#ack").textContent(), { timeout: 5000 }).toMatch(/^limit learned at /);
    expect(pageErrors).toEqual([]);
  });
});
