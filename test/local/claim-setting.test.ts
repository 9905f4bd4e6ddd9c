import postgres, { type Sql } from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import { CLAIM_WINDOW } from "../../src/client/round-trips.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { TEST_URL } from "../db/helpers.ts";
import { forgetPools } from "./helpers.ts";

// LEASE_CLAIM_MS reaches the local coordinator through localPool: real Postgres, LEASE_LIMIT=1.
const base = `claim-setting-${process.pid}-${Date.now()}`;
const pools: LocalPool<Sql>[] = [];
let seq = 0;
const asked: Array<number | undefined> = [];

afterAll(async () => {
  for (const pool of pools) await pool.close();
  const admin = postgres(TEST_URL, { max: 1, onnotice: () => {} });
  await forgetPools(admin, `${base}-%`);
  await admin.end();
});

/** The lifetime of a grant from the queue of a one-slot local pool with these settings. */
async function queuedLifetime(settings: Record<string, string>): Promise<number> {
  const pool = await localPool(
    { DATABASE_URL: TEST_URL, LEASE_POOL: `${base}-${++seq}`, LEASE_LIMIT: "1", LEASE_WAIT_MS: "5000", ...settings },
    { driver },
  );
  pools.push(pool);
  const leases = pool.leases!;
  const first = await leases.acquire();
  asked.push(leases.claimMs);
  const next = leases.acquire({}, "later");
  await expect.poll(async () => (await leases.stats()).waiting).toBe(1);
  await leases.release(first);
  const lease = await next;
  await leases.release(lease);
  return lease.expiresAt - lease.grantedAt;
}

describe("LEASE_CLAIM_MS under localPool", () => {
  it("sets the claim window of grants from the queue; 0 turns the claim off", async () => {
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "250" })).toBe(250);
    expect(await queuedLifetime({ LEASE_CLAIM_MS: "0", LEASE_TTL_MS: "1500" })).toBe(1500);
  });

  it("unset, the window follows the client's measured round trips to the coordinator, within its bounds", async () => {
    const lifetimeMs = await queuedLifetime({});
    expect(lifetimeMs).toBe(asked.at(-1));
    expect(lifetimeMs).toBeGreaterThanOrEqual(CLAIM_WINDOW.minMs);
    expect(lifetimeMs).toBeLessThanOrEqual(CLAIM_WINDOW.maxMs);
  });
});
