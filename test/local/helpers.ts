/** Shared pieces of the local adapter's tests: coordinators on the real Postgres of `npm test`. */
import postgres from "postgres";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import type { PoolConfig } from "../../src/core/index.ts";

/** The real Postgres of `npm test`. */
export const url = process.env.LEASEGATE_TEST_DATABASE_URL!;

/**
 * Reads until `ok` holds; how long that took, or an error with the last value after `timeoutMs`.
 *
 * @example
 * const { ms } = await until(() => stats(), (s) => s.limit === 7, 5000);
 */
export async function until<T>(
  read: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs: number,
  pollMs = 25,
): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  for (;;) {
    const value = await read();
    if (ok(value)) return { value, ms: Date.now() - start };
    if (Date.now() - start > timeoutMs)
      throw new Error(`not reached in ${timeoutMs} ms: ${JSON.stringify(value).slice(0, 500)}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

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
