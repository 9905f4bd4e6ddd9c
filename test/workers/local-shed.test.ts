import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { LOCAL_SHED } from "../../src/client/local-shed.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { workerPool } from "../../src/workers/pool.ts";

// The isolate's local shed in real workerd against the real Durable Object, wired from env by
// workerPool: while the object refuses nearly every acquire (its slots held, its queue full), the
// isolate answers most acquires itself, without a call; the object counts only those it was sent;
// and once the object has refused nothing for a window, every acquire goes to it again.
let seq = 0;

const localShedOf = (error: unknown) =>
  isLeaseError(error) && error.code === "QUEUE_FULL" && error.message.startsWith("Shed in this isolate");

async function overloaded(settings: Record<string, string>) {
  const ctx = createExecutionContext();
  const e = { ...env, LEASE_POOL: `local-shed-${Date.now()}-${++seq}`, ...settings };
  const leases = workerPool(e, ctx, { driver }).leases!;
  const { limit, maxQueue } = await leases.stats();
  const held = await Promise.all(Array.from({ length: limit }, () => leases.acquire()));
  // The queue full of waiters that wait long.
  const parked = Array.from({ length: maxQueue }, () => leases.acquire({ waitMs: 10_000 }));
  await expect.poll(async () => (await leases.stats()).waiting).toBe(maxQueue);
  return { ctx, leases, held, parked };
}

describe("local shed under workerPool", () => {
  it("answers most acquires in the isolate while the object refuses them, and stops once a slot is free", async () => {
    const { ctx, leases, held, parked } = await overloaded({});
    const before = (await leases.stats()).counters.rejected;
    const outcomes: Array<"local" | "coordinator"> = [];
    for (let i = 0; i < 100; i++) {
      const error = await leases.acquire({ waitMs: 5000 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isLeaseError(error) && error.code).toBe("QUEUE_FULL");
      expect((error as { retryAfterMs?: number }).retryAfterMs).toBeGreaterThan(0);
      outcomes.push(localShedOf(error) ? "local" : "coordinator");
    }
    // The first answers all come from the object (the window counts the held leases' grants too);
    // once it holds enough, most are local.
    expect(outcomes.slice(0, LOCAL_SHED.minRequests - held.length).every((o) => o === "coordinator")).toBe(true);
    const local = outcomes.filter((o) => o === "local").length;
    expect(local).toBeGreaterThanOrEqual(50);
    // The object counted exactly the refusals it sent.
    expect((await leases.stats()).counters.rejected - before).toBe(100 - local);

    // Everything back: the parked waiters take the slots and give them back.
    await Promise.all(held.map((l) => leases.release(l)));
    await Promise.all(parked.map((p) => p.then((l) => leases.release(l))));
    // With the object refusing nothing, the shedding ends once its last refusal is a window old.
    await new Promise((resolve) => setTimeout(resolve, LOCAL_SHED.windowMs + 50));
    for (let i = 0; i < 40; i++) await leases.release(await leases.acquire({ waitMs: 5000 }));
    console.log(`local shed: ${local} of 100 refusals answered in the isolate`);
    await waitOnExecutionContext(ctx);
  });

  it("with shards (ShardedLeases) too: a paused pool's refusals are answered in the isolate, with their code", async () => {
    const ctx = createExecutionContext();
    const e = { ...env, LEASE_POOL: `local-shed-${Date.now()}-${++seq}`, LEASE_SHARDS: "2" };
    const { leases, operator } = workerPool(e, ctx, { driver });
    await operator!.pause();
    const before = (await leases!.stats()).counters.timedOut;
    let local = 0;
    for (let i = 0; i < 100; i++) {
      const error = await leases!.acquire({ waitMs: 1 }).catch((e: unknown) => e);
      expect(isLeaseError(error) && error.code).toBe("ACQUIRE_TIMEOUT");
      if (isLeaseError(error) && error.message.startsWith("Shed in this isolate")) local++;
    }
    expect(local).toBeGreaterThanOrEqual(50);
    expect((await leases!.stats()).counters.timedOut - before).toBe(100 - local);
    await operator!.resume();
    await waitOnExecutionContext(ctx);
  });

  it("LEASE_LOCAL_SHED=off sends every acquire to the object", async () => {
    const { ctx, leases, held, parked } = await overloaded({ LEASE_LOCAL_SHED: "off" });
    const before = (await leases.stats()).counters.rejected;
    for (let i = 0; i < 60; i++) {
      const error = await leases.acquire({ waitMs: 5000 }).catch((e: unknown) => e);
      expect(isLeaseError(error) && error.code).toBe("QUEUE_FULL");
      expect(localShedOf(error)).toBe(false);
    }
    expect((await leases.stats()).counters.rejected - before).toBe(60);
    await Promise.all(held.map((l) => leases.release(l)));
    await Promise.all(parked.map((p) => p.then((l) => leases.release(l))));
    await waitOnExecutionContext(ctx);
  });
});
