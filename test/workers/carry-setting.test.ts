import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { holdLease } from "../../src/client/hold.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// LEASE_RELEASE_CARRY_MS reaches the isolate's outbox through workerPool, in real workerd against
// the real Durable Object: a finished lease's release waits that long for an acquire to carry it.
let seq = 0;

/** Right after one `withLease`, how many leases the object holds, and how long the background took. */
async function afterWork(settings: Record<string, string>): Promise<{ held: number; settledMs: number }> {
  const ctx = createExecutionContext();
  const e = { ...env, LEASE_POOL: `carry-setting-${Date.now()}-${++seq}`, ...settings };
  const leases = workerPool(e, ctx, { driver }).leases!;
  await holdLease(leases, () => {}, { waitUntil: (p) => ctx.waitUntil(p) });
  const held = (await leases.stats()).held;
  const started = Date.now();
  await waitOnExecutionContext(ctx);
  const settledMs = Date.now() - started;
  expect((await leases.stats()).held).toBe(0);
  return { held, settledMs };
}

describe("LEASE_RELEASE_CARRY_MS under workerPool", () => {
  it("holds a finished lease's release that long for an acquire to carry; 0 sends it at once", async () => {
    const waited = await afterWork({ LEASE_RELEASE_CARRY_MS: "300" });
    expect(waited.held).toBe(1);
    expect(waited.settledMs).toBeGreaterThanOrEqual(250);
    const unset = await afterWork({});
    expect(unset.held).toBe(1);
    const off = await afterWork({ LEASE_RELEASE_CARRY_MS: "0" });
    expect(off.held).toBe(0);
  });

  it("a request's acquire carries the release another request left", async () => {
    const pool = `carry-setting-${Date.now()}-${++seq}`;
    const e = { ...env, LEASE_POOL: pool, LEASE_RELEASE_CARRY_MS: "1000" };
    const first = createExecutionContext();
    const second = createExecutionContext();
    const a = workerPool(e, first, { driver }).leases!;
    const b = workerPool(e, second, { driver }).leases!;
    await holdLease(a, () => {}, { waitUntil: (p) => first.waitUntil(p) });
    // Its release waits in the isolate's outbox (up to 1000 ms)…
    expect((await b.stats()).held).toBe(1);
    let heldDuring: number | undefined;
    await holdLease(
      b,
      async () => {
        heldDuring = (await b.stats()).held;
      },
      { waitUntil: (p) => second.waitUntil(p) },
    );
    // …until the second acquire carried it: the object held only the second lease.
    expect(heldDuring).toBe(1);
    await Promise.all([waitOnExecutionContext(first), waitOnExecutionContext(second)]);
    expect((await b.stats()).counters).toMatchObject({ granted: 2, released: 2 });
  });
});
