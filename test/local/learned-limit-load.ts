/**
 * A load through a learned limit while other clients take and give back connections, sampled from
 * `pg_stat_activity` (shared by the learned-limit tests on the shared server and a private cluster).
 */
import postgres from "postgres";
import type { LocalPool } from "../../local/pool.ts";
import type { OperatorStats } from "../../src/core/index.ts";

/**
 * One request of the load through a local pool: a lease, a fresh connection named `app`, a short
 * query, the connection closed before the slot is given back (as the database layer does).
 *
 * @example
 * const call = leasedQuery(pool, url, "my-app");
 */
export function leasedQuery(pool: LocalPool, url: string, app: string): () => Promise<void> {
  return async () => {
    const lease = await pool.leases!.acquire();
    try {
      const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: app } });
      try {
        await sql`SELECT pg_sleep(${0.005 + Math.random() * 0.02})`;
      } finally {
        await sql.end({ timeout: 0 });
      }
    } finally {
      await pool.leases!.release(lease);
    }
  };
}

export interface LoadOptions {
  /** One request under the learned limit; a failure's `code` is counted. */
  call: () => Promise<void>;
  /** The pool's limit now. */
  limit: () => Promise<number>;
  /** Where the others connect (a non-superuser role). */
  url: string;
  admin: postgres.Sql;
  /** What is counted: the role's connections against its limit, or every client backend against the server's. */
  scope: { kind: "role"; role: string; limit: number } | { kind: "server"; limit: number };
  headroom: number;
  durationMs: number;
  /** Callers looping acquire → connect → query → close → release. */
  callers: number;
  /** Others ramp up one connection every `stepMs` to `othersMax`, hold, then ramp down, and again. */
  othersMax: number;
  stepMs: number;
}

export interface LoadReport {
  requests: number;
  failed53300: number;
  failedOther: Record<string, number>;
  othersOpened: number;
  othersRefused53300: number;
  /** Most connections of the scope seen at once (sampled every ~10 ms). */
  peak: number;
  /** Sampled time the scope's connections reached into the headroom (the learning lagging behind others). */
  msInHeadroom: number;
  /** Sampled time above the limit itself (the database refuses there: expected 0). */
  msAboveLimit: number;
  limits: { min: number; max: number; changes: number };
  samples: number;
}

const codeOf = (e: unknown) => String((e as { code?: unknown })?.code ?? (e as Error)?.message ?? e);

/**
 * Runs the load and answers what happened.
 *
 * @example
 * const report = await loadWithOthers({ call: leasedQuery(pool, url, app), limit: async () => (await pool.operator!.stats()).limit, … });
 */
export async function loadWithOthers(o: LoadOptions): Promise<LoadReport> {
  const end = Date.now() + o.durationMs;
  const report: LoadReport = {
    requests: 0,
    failed53300: 0,
    failedOther: {},
    othersOpened: 0,
    othersRefused53300: 0,
    peak: 0,
    msInHeadroom: 0,
    msAboveLimit: 0,
    limits: { min: Infinity, max: 0, changes: 0 },
    samples: 0,
  };
  const caller = async () => {
    while (Date.now() < end) {
      try {
        await o.call();
        report.requests++;
      } catch (error) {
        const code = codeOf(error);
        if (code === "53300") report.failed53300++;
        else report.failedOther[code] = (report.failedOther[code] ?? 0) + 1;
      }
    }
  };
  const others = async () => {
    const held: postgres.Sql[] = [];
    const step = () => new Promise((r) => setTimeout(r, o.stepMs));
    while (Date.now() < end) {
      for (let i = 0; i < o.othersMax && Date.now() < end; i++) {
        const sql = postgres(o.url, { max: 1, onnotice: () => {}, connection: { application_name: "another-client" } });
        try {
          await sql`SELECT 1`;
          held.push(sql);
          report.othersOpened++;
        } catch (error) {
          if (codeOf(error) === "53300") report.othersRefused53300++;
          await sql.end({ timeout: 0 });
        }
        await step();
      }
      await step();
      while (held.length > 0) {
        await held.pop()!.end({ timeout: 0 });
        await step();
      }
    }
    for (const sql of held) await sql.end({ timeout: 0 });
  };
  const sampler = async () => {
    let last = Date.now();
    while (Date.now() < end) {
      const [row] =
        o.scope.kind === "role"
          ? await o.admin<
              { n: number }[]
            >`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${o.scope.role}`
          : await o.admin<
              { n: number }[]
            >`SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend'`;
      const now = Date.now();
      const n = row!.n;
      report.samples++;
      report.peak = Math.max(report.peak, n);
      if (n > o.scope.limit - o.headroom) report.msInHeadroom += now - last;
      if (n > o.scope.limit) report.msAboveLimit += now - last;
      last = now;
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const limits = async () => {
    let previous: number | undefined;
    while (Date.now() < end) {
      const limit = await o.limit();
      report.limits.min = Math.min(report.limits.min, limit);
      report.limits.max = Math.max(report.limits.max, limit);
      if (previous !== undefined && previous !== limit) report.limits.changes++;
      previous = limit;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await Promise.all([...Array.from({ length: o.callers }, caller), others(), sampler(), limits()]);
  return report;
}

/**
 * The limit of a local pool now, for {@link loadWithOthers}.
 *
 * @example
 * const limit = limitOf(pool);
 */
export function limitOf(pool: LocalPool): () => Promise<number> {
  return async () => ((await pool.operator!.stats()) as OperatorStats).limit;
}
