import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import {
  type AcquireResult,
  type LeaseGrant,
  type ReleaseResult,
  type RenewResult,
  CLOCK_MARGIN_MS,
  leaseRef,
} from "../../src/core/index.ts";
import { restartCoordinator } from "../support/coordinator.ts";

/**
 * The real Durable Object restarted under load (`ctx.abort()`, as a deploy or a crash would),
 * with holders heartbeating through the restarts. Leases live only in the object's memory: what
 * keeps the limit is the recovery window. Counted on the holders' side, by the lease contract: a
 * holder uses its connection from the moment its grant arrives until it sends its release or its
 * lease's `expiresAt` passes without a renewal. Limit 3 (vitest.workers.config.ts).
 */
const LIMIT = 3;
const WORKERS = 8;
const TTL_MS = 600;
const HEARTBEAT_MS = 150;
const RESTARTS = 3;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("restarts under load", () => {
  it("never lets more holders than the limit use a connection at once, and live holders keep their leases", {
    timeout: 60_000,
  }, async () => {
    const name = `restart-load-${Date.now().toString(36)}`;
    // A stub breaks when its object restarts: every call takes a fresh one, as each request would.
    const stub = () => env.COORDINATOR_DO.getByName(name);
    /** The leases holders are using now: by fence, the expiry they were last told. */
    const inUse = new Map<number, number>();
    let peak = 0;
    let grants = 0;
    let renewals = 0;
    let recovered = 0;
    let late = 0;
    let tooClose = 0;
    const lost: string[] = [];
    let running = true;

    const observe = () => {
      const now = Date.now();
      let n = 0;
      for (const expiresAt of inUse.values()) if (expiresAt > now) n++;
      peak = Math.max(peak, n);
    };

    /** Retries a call whose stub broke under a restart (the client's COORDINATOR_UNAVAILABLE). */
    async function call<T>(fn: () => Promise<T>): Promise<T> {
      for (;;) {
        try {
          return await fn();
        } catch {
          await sleep(10);
        }
      }
    }

    async function hold(lease: LeaseGrant, holdMs: number): Promise<LeaseGrant> {
      let l = lease;
      const until = Date.now() + holdMs;
      while (Date.now() < until) {
        await sleep(Math.min(HEARTBEAT_MS, until - Date.now()));
        const current = l;
        if (Date.now() >= current.expiresAt) {
          // The heartbeat came too late (a stalled timer): the holder stopped at its expiry.
          late++;
          return l;
        }
        const r = await call(async (): Promise<RenewResult> => await stub().renew(leaseRef(current), TTL_MS));
        renewals++;
        if (!r.ok) {
          // A restarted object recovers a lease only with more than the clock margin left: one
          // that reached it later is refused, and its holder stops (at its expiry at the latest).
          // Any other refusal is a live holder losing its lease.
          if (Date.now() < current.expiresAt - CLOCK_MARGIN_MS) lost.push(`fence ${current.fence}: ${r.code}`);
          else tooClose++;
          return l;
        }
        if (r.lease.holder === "recovered") recovered++;
        l = r.lease;
        inUse.set(l.fence, l.expiresAt);
        observe();
      }
      return l;
    }

    const worker = async (i: number) => {
      while (running) {
        const r = await call(
          async (): Promise<AcquireResult> => await stub().acquire({ holder: `w${i}`, waitMs: 4000, ttlMs: TTL_MS }),
        );
        if (!r.ok) continue;
        grants++;
        inUse.set(r.lease.fence, r.lease.expiresAt);
        observe();
        const l = await hold(r.lease, 100 + ((i * 37) % 400));
        inUse.delete(l.fence);
        await call(async (): Promise<ReleaseResult> => await stub().release(leaseRef(l)));
      }
    };

    const workers = Array.from({ length: WORKERS }, (_, i) => worker(i));
    const grantsAt: number[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      await sleep(1500);
      grantsAt.push(grants);
      await restartCoordinator(name);
    }
    await sleep(4000);
    running = false;
    await Promise.all(workers);

    expect(peak).toBeLessThanOrEqual(LIMIT);
    // Every holder that renewed in time kept its lease through every restart (recovered).
    expect(lost).toEqual([]);
    expect(recovered).toBeGreaterThan(0);
    // Granting went on after each restart.
    expect(grants).toBeGreaterThan(grantsAt.at(-1)!);
    expect(new Set(grantsAt).size).toBe(RESTARTS);
    expect(await stub().stats()).toMatchObject({ held: 0, waiting: 0 });
    console.log(
      `[reliability] restarts under load: ${RESTARTS} restarts, ${grants} grants, ${renewals} renewals (${recovered} recovered, ${late} heartbeats too late, ${tooClose} within the clock margin of expiry), peak in use ${peak} of ${LIMIT}`,
    );
  });
});
