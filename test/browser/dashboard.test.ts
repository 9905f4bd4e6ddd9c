import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import bundled from "@sparticuz/chromium";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// Ports of this suite: the Worker and wrangler's inspector (the default 9229 may be taken).
const PORT = Number(process.env.LEASEGATE_BROWSER_PORT ?? 8820);
const INSPECTOR_PORT = PORT + 1;
const TOKEN = "browser-test-token";
const BASE = `http://127.0.0.1:${PORT}`;
/** A Chromium of your own instead of the one `npm install` brings (`@sparticuz/chromium`). */
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || undefined;
// The machines have no network beyond the loopback: nothing in the browser should try to reach out.
const OFFLINE_FLAGS = [
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];
// The package's flags relax the same-origin policy for serverless scraping; the dashboard is tested
// as a browser a person uses would load it.
const RELAXED_FLAGS = new Set(["--disable-web-security", "--allow-running-insecure-content"]);
const ARTIFACTS = "test-artifacts";

let wrangler: ChildProcess | undefined;
let browser: Browser | undefined;
let persistDir = "";
let chromiumDir = "";
let output = "";
/** Why the browser or the server could not start: the test fails with it (a failed hook would only mark it skipped). */
let setupError: Error | undefined;

/**
 * The Chromium that ships inside `@sparticuz/chromium` (brotli-packed in the npm package, so
 * `npm install` is all a fresh machine needs), unpacked into a folder of this run's own: the
 * package would otherwise reuse whatever `/tmp/chromium` holds, a half-written file from an
 * interrupted run or another checkout's copy mid-write.
 */
async function launchChromium(): Promise<Browser> {
  if (CHROMIUM_PATH)
    return chromium.launch({
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", ...OFFLINE_FLAGS],
    });
  chromiumDir = mkdtempSync(join(tmpdir(), "leasegate-chromium-"));
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = chromiumDir; // where executablePath() unpacks (it reads os.tmpdir() per call)
  let executablePath: string;
  try {
    executablePath = await bundled.executablePath();
  } finally {
    if (saved === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = saved;
  }
  const args = [...bundled.args.filter((flag) => !RELAXED_FLAGS.has(flag))];
  for (const flag of OFFLINE_FLAGS) if (!args.includes(flag)) args.push(flag);
  return chromium.launch({ executablePath, headless: true, args });
}

async function waitForServer(deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    if (wrangler?.exitCode !== null) throw new Error(`wrangler dev exited early:\n${output.slice(-2000)}`);
    try {
      const r = await fetch(`${BASE}/__coordinator/stats`, { headers: { authorization: `Bearer ${TOKEN}` } });
      if (r.status === 200) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`wrangler dev did not answer on ${BASE} in time:\n${output.slice(-2000)}`);
}

beforeAll(async () => {
  const hyperdrive = process.env.LEASEGATE_TEST_HYPERDRIVE_URL;
  if (!hyperdrive) throw new Error("LEASEGATE_TEST_HYPERDRIVE_URL is unset: run this suite through `npm test`");
  persistDir = mkdtempSync(join(tmpdir(), "leasegate-browser-"));
  const vars = {
    DEBUG_TOKEN: TOKEN,
    LEASE_LIMIT: "3",
    LEASE_WAIT_MS: "5000",
    LEASE_POOL: "browser",
    APPLICATION_NAME: `${process.env.LEASEGATE_TEST_APP_NAME ?? "leasegate-test"}-browser`,
  };
  wrangler = spawn(
    "wrangler",
    [
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(PORT),
      "--inspector-port",
      String(INSPECTOR_PORT),
      "--persist-to",
      persistDir,
      "--show-interactive-dev-session=false",
      ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`]),
    ],
    {
      env: {
        ...process.env,
        CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE: hyperdrive,
        WRANGLER_SEND_METRICS: "false",
      },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    },
  );
  wrangler.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  wrangler.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const started = waitForServer(Date.now() + 25_000).then(
    () => undefined,
    (error: Error) => error,
  );
  // The browser starts while wrangler does.
  try {
    browser = await launchChromium();
  } catch (error) {
    const from = CHROMIUM_PATH ? `CHROMIUM_PATH=${CHROMIUM_PATH}` : "@sparticuz/chromium (reinstall with `npm ci`)";
    setupError = new Error(`Cannot launch Chromium from ${from}: ${String(error)}`);
  }
  setupError ??= await started;
});

afterAll(async () => {
  await browser?.close();
  if (wrangler?.pid && wrangler.exitCode === null) {
    const exited = new Promise((r) => wrangler!.once("exit", r));
    process.kill(-wrangler.pid, "SIGTERM"); // its own process group: wrangler and its workerd
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
  }
  if (persistDir) rmSync(persistDir, { recursive: true, force: true });
  if (chromiumDir) rmSync(chromiumDir, { recursive: true, force: true });
});

/** Keeps `concurrency` requests in flight against the real app until stopped. */
function load(concurrency: number) {
  let running = true;
  let ok = 0;
  const statuses = new Map<number, number>();
  const loops = Array.from({ length: concurrency }, async () => {
    while (running) {
      const r = await fetch(`${BASE}/api/pitches/trending?limit=5`).catch(() => null);
      const status = r?.status ?? 0;
      await r?.arrayBuffer().catch(() => {});
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      if (status === 200) ok++;
    }
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return { ok, statuses: Object.fromEntries(statuses) };
    },
  };
}

describe("dashboard in headless Chromium", () => {
  it("charts occupancy under load and drives pause, resume and reconciliation", async () => {
    if (setupError) throw setupError;
    const page = await browser!.newPage({ viewport: { width: 1280, height: 860 } });
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    // Anything outside the server would be a CDN or a leak: the page must be self-contained.
    const outside: string[] = [];
    page.on("request", (r) => {
      if (!r.url().startsWith(BASE)) outside.push(r.url());
    });

    await page.goto(`${BASE}/__coordinator/#token=${TOKEN}&interval=250`);
    // The token left the address bar as soon as the page read it.
    expect(page.url()).not.toContain(TOKEN);
    const traffic = load(8);
    try {
      // Attributes are read through locators: the page's CSP (no eval) refuses string predicates.
      const chart = page.locator("#chart");
      await expect
        .poll(async () => Number(await chart.getAttribute("data-max-held")), { timeout: 15_000 })
        .toBeGreaterThan(0);
      // Let a few more samples in, so the screenshot shows a stretch of load.
      await expect
        .poll(async () => Number(await chart.getAttribute("data-samples")), { timeout: 10_000 })
        .toBeGreaterThanOrEqual(16);
      const held = await page.locator('#chart polyline[data-series="held"]').getAttribute("points");
      expect(held?.split(" ").length).toBeGreaterThan(1);
      expect(await page.locator("#occupancy").textContent()).toMatch(/^\d+ \/ 3 held$/);
      // Where the limit comes from, in words: this Worker's LEASE_LIMIT.
      expect(await page.locator("#limitWhy").textContent()).toBe("limit 3: configured (LEASE_LIMIT)");
      expect(await page.locator("#limitWhy").getAttribute("data-source")).toBe("configured");
      // The queue mode: this Worker sets no LEASE_QUEUE, so the default; whether LIFO is in force moves with the load.
      expect(await page.locator("#queueMode").textContent()).toMatch(/^queue adaptive: (FIFO|LIFO) now/);
      await page.click("#reconcile");
      await expect.poll(() => page.locator("#recon").textContent(), { timeout: 5000 }).toMatch(/^db: /);
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: `${ARTIFACTS}/dashboard.png` });
      if (process.env.LEASEGATE_UPDATE_DOCS_SCREENSHOT === "1")
        copyFileSync(`${ARTIFACTS}/dashboard.png`, "docs/dashboard.png");
    } finally {
      const result = await traffic.stop();
      expect(result.ok, JSON.stringify(result.statuses)).toBeGreaterThan(0);
    }

    await page.click("#pause");
    await expect.poll(() => page.locator("#state").textContent(), { timeout: 5000 }).toBe("PAUSED (draining)");
    const stats = async () =>
      (await (
        await fetch(`${BASE}/__coordinator/stats`, { headers: { authorization: `Bearer ${TOKEN}` } })
      ).json()) as { paused: boolean; held: number };
    expect((await stats()).paused).toBe(true);
    await page.click("#resume");
    await expect.poll(() => page.locator("#state").textContent(), { timeout: 5000 }).toBe("granting");
    expect((await stats()).paused).toBe(false);

    expect(pageErrors).toEqual([]);
    expect(outside).toEqual([]);
  });
});
