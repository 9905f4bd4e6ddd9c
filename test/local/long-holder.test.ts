import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { DEFAULT_CONFIG, isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { forgetPools, url } from "./helpers.ts";

/**
 * A live holder is never reaped: a real `pg_sleep(20)` under a default lease (1500 ms TTL) through
 * the database layer, whose renewal is the client's heartbeat. Meanwhile nobody else gets the one
 * slot. The only long test of the suite; it runs beside the others.
 */
const sql = postgres(url, { max: 3, onnotice: () => {} });
const pool = `long-holder-${process.pid}-${Date.now()}`;
const coordinator = new PostgresCoordinator({ sql, pool, config: { ...DEFAULT_CONFIG, limit: 1 } });
afterAll(async () => {
  await coordinator.close();
  await forgetPools(sql, pool);
  await sql.end();
});

describe("a live holder with a long query", () => {
  it("keeps its lease through a 20 s pg_sleep: renewed, never expired, the slot never handed on", async () => {
    const config = {
      ...databaseConfig({ DATABASE_URL: url, DB_DEADLINE_MS: "60000" }),
      retry: { maxAttempts: 1, baseDelayMs: 10, maxDelayMs: 10 },
    };
    const lines: string[] = [];
    const db = new Database({
      name: "long",
      driver: openDriver(config),
      leases: new Leases(coordinator),
      config,
      log: (l) => lines.push(l),
    });
    const other = new Leases(coordinator, { holder: "other" });
    const query = db.query("SELECT pg_sleep(20), 1 AS done", [], { holder: "long" });
    let probes = 0;
    let stolen = 0;
    let minExpiresInMs = Infinity;
    const started = Date.now();
    await expect.poll(async () => (await coordinator.stats()).held).toBe(1);
    while (Date.now() - started < 19_000) {
      await new Promise((r) => setTimeout(r, 1000));
      const s = await coordinator.stats();
      if (s.held === 1) minExpiresInMs = Math.min(minExpiresInMs, s.leases[0]!.expiresInMs);
      const taken = await other.acquire({ waitMs: 0 }).catch((e: unknown) => (isLeaseError(e) ? e.code : e));
      probes++;
      if (typeof taken === "object") {
        stolen++;
        await other.release(taken as never);
      }
    }
    const rows = await query;
    expect(rows[0]).toMatchObject({ done: 1 });
    const s = await coordinator.stats();
    expect(stolen).toBe(0);
    expect(s.counters).toMatchObject({ expired: 0, released: 1, granted: 1 });
    expect(lines.filter((l) => l.includes("lease_renew_failed"))).toEqual([]);
    expect(minExpiresInMs).toBeGreaterThan(0);
    console.log(
      `[reliability] long holder: 20 s pg_sleep under a ${DEFAULT_CONFIG.leaseTtlMs} ms lease, ${probes} probes for its slot all refused, lowest time to expiry seen ${minExpiresInMs} ms, expired 0`,
    );
  }, 70_000);
});
