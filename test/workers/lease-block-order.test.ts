import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { ShardedLeases, createIsolateShards } from "../../src/client/sharded-leases.ts";

/**
 * The lease block against the real coordinator object in workerd: a busy isolate whose block holds
 * the whole limit (LEASE_LIMIT is 3 here, the lease TTL 30 s) and keeps serving its own requests,
 * while a caller of another isolate waits at the coordinator.
 */
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let seq = 0;

async function busyIsolateAndOneCaller(yieldToQueue: boolean) {
  const pool = `block-order-${++seq}`;
  const stub = () => env.COORDINATOR_DO.getByName(pool);
  const isolate = createIsolateShards({ shards: 1, limit: 3, maxBlock: 3, idleMs: 20, yieldToQueue });
  const pending: Array<Promise<unknown>> = [];
  const client = () =>
    new ShardedLeases({ coordinators: [stub()], isolate, waitMs: 3000, waitUntil: (p) => void pending.push(p) });
  // The busy isolate takes every slot, then keeps four workers going on them.
  const first = await Promise.all([0, 1, 2].map(() => client().acquire()));
  await Promise.all(first.map((l) => client().release(l)));
  let stop = false;
  const served = { n: 0 };
  const worker = async () => {
    while (!stop) {
      const lease = await client().acquire();
      await sleep(5);
      await client().release(lease);
      served.n++;
    }
  };
  const workers = [0, 1, 2, 3].map(() => worker());
  await sleep(20);
  // Another isolate's caller: one acquire of its own, queued at the full coordinator.
  const started = Date.now();
  const other = await new Leases(stub()).acquire({ waitMs: 1000 }).then(
    (lease) => ({ ok: true as const, lease, waitedMs: Date.now() - started }),
    (error: { code: string }) => ({ ok: false as const, code: error.code, waitedMs: Date.now() - started }),
  );
  stop = true;
  await Promise.all(workers);
  if (other.ok) await stub().release({ leaseId: other.lease.id, fence: other.lease.fence });
  // Idle block leases go back after idleMs: then the pool is empty again.
  for (let i = 0; i < 50 && (await stub().stats()).held > 0; i++) await Promise.all([sleep(20), ...pending]);
  return { other, served: served.n, held: (await stub().stats()).held };
}

describe("lease block in workerd: global order across isolates", () => {
  it("hands finished leases back while another isolate's caller waits, so that caller is served in about staleAfterMs", async () => {
    const r = await busyIsolateAndOneCaller(true);
    expect(r.other).toMatchObject({ ok: true });
    expect(r.other.waitedMs).toBeLessThan(500);
    expect(r.served).toBeGreaterThan(0);
    expect(r.held).toBe(0);
  });

  it("keeping leases while young (yieldToQueue false), the busy isolate starves the other caller past its deadline", async () => {
    const r = await busyIsolateAndOneCaller(false);
    expect(r.other).toMatchObject({ ok: false, code: "ACQUIRE_TIMEOUT" });
    expect(r.held).toBe(0);
  });
});
