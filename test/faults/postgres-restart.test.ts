import { env, exports } from "cloudflare:workers";
import { afterAll, describe, expect, it } from "vitest";
import { closeConnection, connectFromWorker } from "../../src/db/hyperdrive.ts";

/**
 * Postgres crashes (immediate shutdown) and comes back while the Worker serves a steady load.
 * Callers must see clear, retryable 503s while it is down — never a hang, a 500 or a leaked lease —
 * and service must recover by itself. The database is a private cluster (see private-postgres.ts).
 */
const controlUrl = (env as unknown as { FAULT_CONTROL_URL: string }).FAULT_CONTROL_URL;
const get = (path: string) => exports.default.fetch(new Request(`http://example.test${path}`));
const main = () => env.COORDINATOR_DO.getByName("main");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function control(action: "stop" | "start"): Promise<void> {
  const r = await fetch(`${controlUrl}/${action}`, { method: "POST" });
  if (!r.ok) throw new Error(`control ${action}: ${r.status} ${await r.text()}`);
}

interface Sample {
  phase: "before" | "down" | "after";
  status: number;
  code: string | undefined;
  retryAfter: string | null;
  ms: number;
  /** The error message, checked for leaked connection details. */
  message: string | undefined;
  endedAt: number;
}

let observer: ReturnType<typeof connectFromWorker> | undefined;
afterAll(async () => {
  if (observer) await closeConnection(observer);
});

describe("Postgres restarts mid-load", () => {
  it("answers clear 503s while it is down, recovers, and leaks no lease", async () => {
    expect((await get("/api/pitches/trending?limit=3")).status).toBe(200);
    const samples: Sample[] = [];
    let phase: Sample["phase"] = "before";
    let running = true;
    const client = async (i: number) => {
      while (running) {
        const at = phase;
        const started = Date.now();
        const r = await get(i % 2 ? "/api/pitches/trending?limit=3" : "/api/pitches/public?limit=3");
        const body = (await r.json()) as { error?: { code?: string; message?: string } };
        samples.push({
          phase: at,
          status: r.status,
          code: body.error?.code,
          message: body.error?.message,
          retryAfter: r.headers.get("retry-after"),
          ms: Date.now() - started,
          endedAt: Date.now(),
        });
        await sleep(5);
      }
    };
    const load = [0, 1, 2, 3].map(client);
    await sleep(300);
    phase = "down";
    const stoppedAt = Date.now();
    await control("stop");
    await sleep(600);
    const health = await get("/health");
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: "unavailable", database: "down", coordinator: "up" });
    await control("start");
    phase = "after";
    const recoveredFrom = Date.now();
    await expect
      .poll(() => samples.filter((s) => s.phase === "after" && s.status === 200).length, { timeout: 15_000 })
      .toBeGreaterThanOrEqual(20);
    const recoveryMs = Date.now() - recoveredFrom;
    running = false;
    await Promise.all(load);

    // Every failure was a clear, retryable 503 with Retry-After; nothing else, nothing slow.
    const unclear = samples.filter(
      (s) => s.status !== 200 && !(s.status === 503 && s.code === "DATABASE_UNAVAILABLE" && Number(s.retryAfter) >= 1),
    );
    expect(unclear).toEqual([]);
    // The driver's errors quote host and port; the responses never do.
    expect(samples.filter((s) => /postgres:\/\/|127\.0\.0\.1|5490|leasegate@/.test(s.message ?? ""))).toEqual([]);
    const down = samples.filter((s) => s.phase === "down");
    expect(down.filter((s) => s.status === 503).length).toBeGreaterThan(0);
    expect(Math.max(...samples.map((s) => s.ms))).toBeLessThan(5000);
    // Before the stop, everything was served (a request still in flight when it came may fail).
    expect(samples.filter((s) => s.endedAt < stoppedAt).every((s) => s.status === 200)).toBe(true);

    // No leaked lease: every grant was given back, nothing expired, nothing held or queued.
    await expect.poll(async () => (await main().stats()).held).toBe(0);
    const s = await main().stats();
    expect(s).toMatchObject({ held: 0, waiting: 0, counters: { expired: 0 } });
    expect(s.counters.granted).toBe(s.counters.released);
    // And no connection left open on the database.
    observer = connectFromWorker(env.HYPERDRIVE.connectionString, "leasegate-observer");
    await expect
      .poll(async () =>
        Number(
          (
            await observer!`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${env.APPLICATION_NAME!}`
          )[0]!.n,
        ),
      )
      .toBe(0);
    expect((await get("/health")).status).toBe(200);
    const n503 = samples.filter((s) => s.status === 503).length;
    console.log(
      `[reliability] postgres restart: ${samples.length} requests, ${n503} clear 503s (DATABASE_UNAVAILABLE), ` +
        `recovered ${recoveryMs} ms after start, ${s.counters.granted} leases granted = released, 0 leaked`,
    );
  });
});
