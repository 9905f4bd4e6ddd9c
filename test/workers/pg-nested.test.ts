import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// In real workerd (AsyncLocalStorage from nodejs_compat), the real Durable Object, Postgres
// through the Hyperdrive binding: a request holding the pool's only slot that asks for another
// fails at once with NESTED_LEASE instead of waiting on itself until its deadline.
let seq = 0;
const onlySlot = () => ({
  ...env,
  LEASE_POOL: `nested-${Date.now()}-${++seq}`,
  LEASE_LIMIT: "1",
  LEASE_WAIT_MS: "5000",
});

async function failure(run: () => Promise<unknown>): Promise<{ code: string; ms: number }> {
  const started = Date.now();
  const error = await run().then(
    () => undefined,
    (e: unknown) => e,
  );
  return { code: isLeaseError(error) ? error.code : String(error), ms: Date.now() - started };
}

describe("nested leases in workerd (LEASE_LIMIT=1)", () => {
  it("a query inside a transaction of the same workerPool fails fast; the slot is back and the pool serves the next request", async () => {
    const e = onlySlot();
    const ctx = createExecutionContext();
    const pool = workerPool(e, ctx, { driver });
    const nested = await failure(() => pool.db.transaction(async () => pool.db.query("SELECT 1")));
    expect(nested.code).toBe("NESTED_LEASE");
    expect(nested.ms).toBeLessThan(1000);
    const sqlInside = await failure(() => pool.db.transaction(async () => pool.sql((sql) => sql`SELECT 1`)));
    expect(sqlInside.code).toBe("NESTED_LEASE");
    await waitOnExecutionContext(ctx);
    expect((await pool.leases!.stats()).held).toBe(0);
    const next = workerPool(e, createExecutionContext(), { driver });
    expect(await next.db.query("SELECT 1 AS one")).toEqual([{ one: 1 }]);
  });

  it("withLease inside withLease over the same object fails fast, also from two unnamed clients", async () => {
    const name = `nested-plain-${Date.now()}`;
    const outer = new Leases(env.COORDINATOR_DO.getByName(name));
    const inner = new Leases(env.COORDINATOR_DO.getByName(name));
    const nested = await failure(() => outer.withLease(() => inner.withLease(() => "never")));
    expect(nested.code).toBe("NESTED_LEASE");
    expect(nested.ms).toBeLessThan(1000);
    expect((await outer.stats()).held).toBe(0);
  });

  it("concurrent requests of one isolate are not nested in each other: each holds its own lease", async () => {
    const e = { ...onlySlot(), LEASE_LIMIT: "2" };
    const order: string[] = [];
    await Promise.all(
      ["a", "b"].map(async (who) => {
        const ctx = createExecutionContext();
        const pool = workerPool(e, ctx, { driver });
        await pool.db.transaction(async (tx) => {
          order.push(`${who} in`);
          await tx.query("SELECT pg_sleep(0.05)");
          order.push(`${who} out`);
        });
        await waitOnExecutionContext(ctx);
      }),
    );
    // Both held a slot at once: neither waited for the other, neither was refused.
    expect(order.slice(0, 2).sort()).toEqual(["a in", "b in"]);
  });
});
