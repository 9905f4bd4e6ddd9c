/**
 * Counts what the database sees, not what the ledger says: a sampler that reads `pg_stat_activity`
 * on its own (superuser) connection every few ms and keeps every client backend of one role. Only
 * the leased connections log in as that role (the coordinator's own connections use another), so
 * the count is the app's leased backends — including one still exiting after its client closed the
 * socket, which Postgres also counts against the role's `CONNECTION LIMIT`. Where the leased
 * connections share the coordinator's role, it keeps the backends of one `application_name`
 * instead (the pool's, which only its leased connections carry).
 *
 * Runtime-neutral (no Node imports): the Node scenarios read through postgres.js, the workerd ones
 * through node-postgres.
 *
 * Two clocks, kept apart rather than converted: each sample carries the server's clock (`at`,
 * `clock_timestamp()` during the read) and this process's (`local`, `Date.now()` once the read came
 * back). Questions among samples, or against the server's view, use `at`; a question against a time
 * the test took itself with `Date.now()` (when a caller was answered) uses `local`, so both sides of
 * the subtraction are on one clock. Same machine, but no offset is worth estimating: workerd's
 * `Date.now()` only moves on I/O, and a sample read after `t` on the test's clock is what the test
 * means by "after `t`".
 */

/** One client backend of the role, as one sample saw it. */
export interface Backend {
  pid: number;
  /** The connection's `application_name`: the tests give each leased connection its own. */
  app: string;
  state: string | null;
  query: string;
}

/** One read of `pg_stat_activity`. */
export interface Sample {
  /** The server's clock when it was read, ms. */
  at: number;
  /** This process's clock (`Date.now()`) when the read came back, ms. */
  local: number;
  backends: Backend[];
}

/** Whose client backends a sampler keeps: one login role's, or one `application_name`'s. */
export type Watch = { role: string } | { app: string };

/** Runs one statement on the sampler's connection; rows as plain objects. */
export type Query = (text: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>;

// One row always (an aggregate), so an empty sample still carries its time. The column is one of two
// fixed names, never the caller's text; the value is a parameter.
const sampleSql = (
  column: "usename" | "application_name",
) => `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS at,
  coalesce(json_agg(json_build_object('pid', pid, 'app', application_name, 'state', state, 'query', left(query, 200)))
    FILTER (WHERE pid IS NOT NULL), '[]')::text AS backends
  FROM pg_stat_activity WHERE ${column} = $1 AND backend_type = 'client backend'`;

/** What a sampler saw, and questions about it. */
export interface Sampled {
  readonly watching: Watch;
  readonly samples: readonly Sample[];
  /** Most backends in one sample. */
  peak(): number;
  /** The count each time it changed: `[at, n]`. */
  timeline(): Array<[number, number]>;
  /** First and last sample time (server clock) with a backend matching `match`; null if never seen. */
  seen(match: (b: Backend) => boolean): { first: number; last: number } | null;
  /** The first sample at or after `from` with no backend matching `match`; null if none. */
  goneAt(match: (b: Backend) => boolean, from: number): number | null;
  /**
   * Backends seen after their client had closed the connection (`closedAt`: application name →
   * when `close()` resolved): how many, and the longest such linger, ms.
   */
  lingering(closedAt: ReadonlyMap<string, number>): { count: number; maxMs: number };
  /** Gaps between consecutive samples, ms: median and max. */
  gaps(): { medianMs: number; maxMs: number };
}

/** A running sampler: `stop()` ends it and answers what it saw. */
export interface Sampler extends Sampled {
  stop(): Promise<Sampled>;
  /**
   * The first sample, taken or to come, for which `ok` holds; throws once `timeoutMs` passed (or the
   * sampler stopped, or a read failed) without one.
   */
  until(ok: (s: Sample) => boolean, timeoutMs?: number): Promise<Sample>;
  /**
   * Waits for the first sample read at or after `t` (this process's clock: `local`) that shows no
   * backend, and answers how long after `t` it came back, ms; throws if none within `timeoutMs`.
   */
  goneAfter(t: number, timeoutMs?: number): Promise<number>;
}

const median = (xs: number[]) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/**
 * Starts sampling the backends of `watch` (a string is a role) every `periodMs` (a read that takes
 * longer is followed at once by the next). The first sample is taken before this resolves.
 *
 * @example
 * const sampler = await startSampler((t, p) => admin.unsafe(t, p), "app_role");
 * ... ; const seen = await sampler.stop(); expect(seen.peak()).toBeLessThanOrEqual(1);
 */
export async function startSampler(query: Query, watch: string | Watch, periodMs = 10): Promise<Sampler> {
  const watching: Watch = typeof watch === "string" ? { role: watch } : watch;
  const [sql, name] =
    "role" in watching ? [sampleSql("usename"), watching.role] : [sampleSql("application_name"), watching.app];
  const samples: Sample[] = [];
  let running = true;
  let failure: unknown;
  const read = async () => {
    const [row] = await query(sql, [name]);
    samples.push({ at: Number(row!.at), local: Date.now(), backends: JSON.parse(String(row!.backends)) as Backend[] });
  };
  await read();
  const loop = (async () => {
    while (running) {
      const started = Date.now();
      try {
        await read();
      } catch (error) {
        failure = error;
        return;
      }
      const rest = periodMs - (Date.now() - started);
      if (rest > 0) await new Promise((r) => setTimeout(r, rest));
    }
  })();
  // Polls the samples (every 5 ms, half a period) until one holds `ok`: null past the timeout, once
  // sampling has ended, or after a failed read (which `stop()` reports).
  const find = async (ok: (s: Sample) => boolean, timeoutMs: number): Promise<Sample | null> => {
    const end = Date.now() + timeoutMs;
    for (let i = 0; ; ) {
      for (; i < samples.length; i++) if (ok(samples[i]!)) return samples[i]!;
      if (!running || failure !== undefined || Date.now() > end) return null;
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const sampled: Sampled = {
    watching,
    samples,
    peak: () => Math.max(0, ...samples.map((s) => s.backends.length)),
    timeline() {
      const out: Array<[number, number]> = [];
      for (const s of samples) if (out.at(-1)?.[1] !== s.backends.length) out.push([s.at, s.backends.length]);
      return out;
    },
    seen(match) {
      let first: number | null = null;
      let last = 0;
      for (const s of samples) {
        if (!s.backends.some(match)) continue;
        first ??= s.at;
        last = s.at;
      }
      return first === null ? null : { first, last };
    },
    goneAt(match, from) {
      for (const s of samples) if (s.at >= from && !s.backends.some(match)) return s.at;
      return null;
    },
    lingering(closedAt) {
      const worst = new Map<string, number>();
      for (const s of samples) {
        for (const b of s.backends) {
          const closed = closedAt.get(b.app);
          if (closed !== undefined && s.at > closed) worst.set(b.app, Math.max(worst.get(b.app) ?? 0, s.at - closed));
        }
      }
      return { count: worst.size, maxMs: Math.round(Math.max(0, ...worst.values())) };
    },
    gaps() {
      const gaps = samples.slice(1).map((s, i) => s.at - samples[i]!.at);
      return { medianMs: Math.round(median(gaps)), maxMs: Math.round(Math.max(0, ...gaps)) };
    },
  };
  return {
    ...sampled,
    async stop() {
      running = false;
      await loop;
      if (failure) throw failure;
      return sampled;
    },
    async until(ok, timeoutMs = 3000) {
      const s = await find(ok, timeoutMs);
      if (s === null) throw new Error(`no such sample of ${name} within ${timeoutMs} ms`, { cause: failure });
      return s;
    },
    async goneAfter(t, timeoutMs = 3000) {
      const s = await find((x) => x.local >= t && x.backends.length === 0, timeoutMs);
      if (s === null)
        throw new Error(`backends of ${name} still there ${timeoutMs} ms after the answer`, { cause: failure });
      return s.local - t;
    },
  };
}
