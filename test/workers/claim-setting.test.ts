import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { CLAIM_WINDOW } from "../../src/client/round-trips.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// LEASE_CLAIM_MS reaches the coordinator through workerPool: a grant from the queue lives the
// window it names (or its TTL with 0: the object's, 30 s in these bindings), in real workerd
// against the real Durable Object.
let seq = 0;

/**
 * The lifetime of a grant from the queue of a full pool, its client wired from env with these
 * settings, and the claim window the client asked it with.
 */
async function queued(settings: Record<string, string>): Promise<{ lifetimeMs: number; askedMs: number | undefined }> {
  const ctx = createExecutionContext();
  const e = { ...env, LEASE_POOL: `claim-setting-${Date.now()}-${++seq}`, ...settings };
  const leases = workerPool(e, ctx, { driver }).leases!;
  // The object's own limit (its bindings: 3) decides when the next caller queues.
  const { limit } = await leases.stats();
  const held = await Promise.all(Array.from({ length: limit }, () => leases.acquire()));
  const askedMs = leases.claimMs;
  const next = leases.acquire({ waitMs: 5000 }, "later");
  await expect.poll(async () => (await leases.stats()).waiting).toBe(1);
  await leases.release(held[0]!);
  const lease = await next;
  await Promise.all([...held.slice(1), lease].map((l) => leases.release(l)));
  await waitOnExecutionContext(ctx);
  return { lifetimeMs: lease.expiresAt - lease.grantedAt, askedMs };
}
const queuedLifetime = async (settings: Record<string, string>) => (await queued(settings)).lifetimeMs;

describe("LEASE_CLAIM_MS under workerPool", () => {
  it("fixes the claim window of grants from the queue; 0 turns the claim off", async () => {
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "250" })).toBe(250);
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "0" })).toBe(Number(env.LEASE_TTL_MS));
  });

  it("unset, the window follows the client's measured round trips to the object, within its bounds", async () => {
    const { lifetimeMs, askedMs } = await queued({});
    // The client measured its acquires before it asked: the window is what it asked, not the initial one.
    expect(lifetimeMs).toBe(askedMs);
    expect(lifetimeMs).toBeGreaterThanOrEqual(CLAIM_WINDOW.minMs);
    expect(lifetimeMs).toBeLessThanOrEqual(CLAIM_WINDOW.maxMs);
    console.log(`claim window in local workerd after a few round trips: ${lifetimeMs} ms`);
  });
});
