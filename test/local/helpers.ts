/** Shared pieces of the local adapter's tests: coordinators on the real Postgres of `npm test`. */
import postgres from "postgres";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import type { PoolConfig } from "../../src/core/index.ts";

/** The real Postgres of `npm test`. */
export const url = process.env.LEASEGATE_TEST_DATABASE_URL!;

/** Deletes the local coordinator's rows of the pools whose names match `pattern` (SQL `LIKE`). */
export async function forgetPools(sql: postgres.Sql, pattern: string): Promise<void> {
  for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"]) {
    await sql`DELETE FROM ${sql(t)} WHERE pool LIKE ${pattern}`;
  }
}

/**
 * Coordinators for one test file, each on a client of its own (as separate processes would be),
 * in pools named `<prefix>-<pid>-<time>-<n>`; `cleanup()` closes them and deletes their rows.
 */
export function localPools(prefix: string, defaults: PoolConfig) {
  const clients: postgres.Sql[] = [];
  const coordinators: PostgresCoordinator[] = [];
  const base = `${prefix}-${process.pid}-${Date.now()}`;
  let seq = 0;
  return {
    base,
    clients,
    /** A fresh pool name of this file. */
    name: () => `${base}-${++seq}`,
    coordinator(config: Partial<PoolConfig> = {}, pool = `${base}-${++seq}`): PostgresCoordinator {
      const sql = postgres(url, { max: 3, onnotice: () => {} });
      clients.push(sql);
      const c = new PostgresCoordinator({ sql, pool, config: { ...defaults, ...config } });
      coordinators.push(c);
      return c;
    },
    async cleanup(): Promise<void> {
      for (const c of coordinators) await c.close();
      const sql = clients[0];
      if (sql) await forgetPools(sql, `${base}-%`);
      for (const s of clients) await s.end();
    },
  };
}
