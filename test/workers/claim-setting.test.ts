import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { DEFAULT_CLAIM_MS } from "../../src/client/leases.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// LEASE_CLAIM_MS reaches the coordinator through workerPool: a grant from the queue lives the
// window it names (or its TTL with 0: the object's, 30 s in these bindings), in real workerd
// against the real Durable Object.
let seq = 0;

/** The lifetime of a grant from the queue of a full pool, its client wired from env with these settings. */
async function queuedLifetime(settings: Record<string, string>): Promise<number> {
  const ctx = createExecutionContext();
  const e = { ...env, LEASE_POOL: `claim-setting-${Date.now()}-${++seq}`, ...settings };
  const leases = workerPool(e, ctx, { driver }).leases!;
  // The object's own limit (its bindings: 3) decides when the next caller queues.
  const { limit } = await leases.stats();
  const held = await Promise.all(Array.from({ length: limit }, () => leases.acquire()));
  const next = leases.acquire({ waitMs: 5000 }, "later");
  await expect.poll(async () => (await leases.stats()).waiting).toBe(1);
  await leases.release(held[0]!);
  const lease = await next;
  await Promise.all([...held.slice(1), lease].map((l) => leases.release(l)));
  await waitOnExecutionContext(ctx);
  return lease.expiresAt - lease.grantedAt;
}

describe("LEASE_CLAIM_MS under workerPool", () => {
  it("sets the claim window of grants from the queue; 0 turns the claim off; unset is the default", async () => {
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "250" })).toBe(250);
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "0" })).toBe(Number(env.LEASE_TTL_MS));
    expect(await queuedLifetime({})).toBe(DEFAULT_CLAIM_MS);
  });
});
