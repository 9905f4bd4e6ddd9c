/**
 * The database's side of the limit, for the Node scenarios and `bench/run-on.ts`: a real role with
 * `CONNECTION LIMIT n` that only leased connections log in as, a sampler of its backends in
 * `pg_stat_activity`, the pools wired as an app wires them (`localPool`), and a TCP proxy that can
 * cut the coordinator off from the database.
 *
 * One construction needs saying: `localPool` opens the coordinator's bookkeeping connections and
 * the leased ones from the same `DATABASE_URL`. To count the leased ones alone, the pool is given
 * the driver it would load anyway (postgres.js), wrapped to log in as the limited role; the
 * coordinator stays on the superuser URL. The wrapper gives every leased connection an
 * `application_name` of its own (the pool's, plus `#n`), opens it at once (one `pg_backend_pid()`
 * round trip, so a refused login — 53300, too many connections for the role — is seen where it
 * happens), and notes when its `close()` resolved. Everything else is the library's own.
 */
import { type Server, type Socket, connect, createServer } from "node:net";
import postgres from "postgres";
import { type LocalPool, type LocalPoolEnv, localPool } from "../../local/pool.ts";
import type { ClientConnection, ConnectTarget, DriverModule } from "../../src/db/driver.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { forgetPools } from "../local/helpers.ts";
import { type Sampled, type Sampler, startSampler } from "./sampler.ts";

export { type Backend, type Sampled, type Sampler, startSampler } from "./sampler.ts";

/**
 * A superuser URL of the database to use: the test database (`npm test` sets it), else
 * `DATABASE_URL` (the benchmark), else the local cluster.
 */
export const ADMIN_URL =
  process.env.LEASEGATE_TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The code of an error, or of the error it wraps (a `LeaseError` keeps the driver's as `cause`). */
export function codeOf(error: unknown): string {
  const e = error as { code?: unknown; cause?: { code?: unknown } } | null;
  return String(e?.code ?? e?.cause?.code ?? error);
}

/** The Postgres code of a refused login over the role's connection limit. */
export const TOO_MANY = "53300";

/** True when `error`, or one it wraps, is a 53300. */
export function isTooMany(error: unknown): boolean {
  for (let e = error as { code?: unknown; cause?: unknown } | null, i = 0; e && i < 5; i++) {
    if (e.code === TOO_MANY) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** A login role with `CONNECTION LIMIT n` in the test database; `drop()` ends its backends and drops it. */
export interface AppRole {
  readonly name: string;
  /** The test database, logged in as this role (trust auth on 127.0.0.1). */
  readonly url: string;
  drop(): Promise<void>;
}

let roles = 0;

/**
 * Creates the role the leased connections log in as. Postgres refuses its `limit + 1`th login with
 * 53300, counting every backend of the role — also one still exiting after its client left.
 *
 * @example
 * const role = await appRole(admin, 1);
 */
export async function appRole(admin: postgres.Sql, limit: number): Promise<AppRole> {
  const name = `lg_limit_${process.pid}_${Date.now().toString(36)}_${++roles}`;
  await admin.unsafe(`CREATE ROLE ${name} LOGIN CONNECTION LIMIT ${limit}`);
  const url = new URL(ADMIN_URL);
  url.username = name;
  url.password = "";
  return {
    name,
    url: url.toString(),
    async drop() {
      await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${name}`;
      for (let i = 0; i < 50; i++) {
        const [row] = await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${name}`;
        if (row?.n === 0) break;
        await sleep(20);
      }
      await admin.unsafe(`DROP ROLE IF EXISTS ${name}`);
    },
  };
}

/** What the leased connections of one pool did, on this process's clock. */
export interface ConnectionLog {
  /** `application_name` → when the connection was open and its backend pid. */
  opened: Map<string, { at: number; pid: number }>;
  /** `application_name` → when its `close()` resolved. */
  closed: Map<string, number>;
  /** Logins the database refused (53300 and any other), with when. */
  refused: Array<{ at: number; code: string; app: string }>;
}

export function connectionLog(): ConnectionLog {
  return { opened: new Map(), closed: new Map(), refused: [] };
}

let connections = 0;

/**
 * The postgres.js driver module, logging in to `url` (the limited role) with an application name of
 * its own per connection, opened at once and logged in `log`. The connection object is the
 * driver's own (behind a proxy that only notes `close()`), so whatever the library's driver adds —
 * a cancel, a startup `statement_timeout` — passes through.
 *
 * @example
 * const pool = await localPool(env, { driver: leasedDriver(role.url, log) });
 */
export function leasedDriver<C>(
  url: string,
  log: ConnectionLog,
  inner: DriverModule<C> = postgresDriver as unknown as DriverModule<C>,
): DriverModule<C> {
  return {
    ...inner,
    async connect(target: ConnectTarget): Promise<ClientConnection<C>> {
      const app = `${target.applicationName.slice(0, 50)}#${++connections}`;
      const conn = await inner.connect({ ...target, connectionString: url, applicationName: app });
      try {
        const [row] = await conn.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
        log.opened.set(app, { at: Date.now(), pid: row!.pid });
      } catch (error) {
        log.refused.push({ at: Date.now(), code: codeOf(error), app });
        await conn.close();
        throw error;
      }
      const close = async () => {
        await conn.close();
        log.closed.set(app, Date.now());
      };
      return new Proxy(conn, {
        get(t, prop) {
          if (prop === "close") return close;
          const value = Reflect.get(t, prop, t) as unknown;
          // A method of a class (which may read private fields) runs on the connection itself; own
          // properties (the driver's client: a function with properties) pass as they are.
          return typeof value === "function" && !Object.hasOwn(t, prop)
            ? (value as (...a: unknown[]) => unknown).bind(t)
            : value;
        },
      });
    },
  };
}

/** The variables of every scenario's pools, on top of which each sets its own. */
export function poolEnv(pool: string, extra: Partial<LocalPoolEnv> = {}): LocalPoolEnv {
  return {
    DATABASE_URL: ADMIN_URL,
    LEASE_POOL: pool,
    LEASE_LIMIT: "1",
    LEASE_TTL_MS: "900",
    LEASE_WAIT_MS: "5000",
    APPLICATION_NAME: pool,
    ...extra,
  };
}

let pools = 0;

/** A fresh pool name (`limit-<pid>-<time>-<n>`): rows of every such pool are deleted by {@link Scene.end}. */
export function poolName(): string {
  return `limit-${process.pid}-${Date.now().toString(36)}-${++pools}`;
}

/**
 * One scenario's world: the superuser client, the limited role, a sampler of its backends, and the
 * pools opened through {@link Scene.open} (each a process's view of the same pool: a coordinator of
 * its own on its own client). `end()` stops the sampler, closes the pools and drops the role.
 */
export interface Scene {
  readonly admin: postgres.Sql;
  readonly role: AppRole;
  readonly sampler: Sampler;
  readonly log: ConnectionLog;
  readonly pool: string;
  open(extra?: Partial<LocalPoolEnv>): Promise<LocalPool<postgres.Sql>>;
  end(): Promise<void>;
}

/**
 * Sets up a scenario with `LEASE_LIMIT=limit` and a role limited to `limit + headroom` logins.
 *
 * @example
 * const scene = await scene(1);
 * const pool = await scene.open({ DB_DEADLINE_MS: "1000" });
 */
export async function scene(limit: number, headroom = 0): Promise<Scene> {
  const admin = postgres(ADMIN_URL, { max: 2, onnotice: () => {} });
  const probe = postgres(ADMIN_URL, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: "lg-limit-sampler" },
  });
  const role = await appRole(admin, limit + headroom);
  const sampler = await startSampler((text, params) => probe.unsafe(text, params as never[]), role.name);
  const log = connectionLog();
  const pool = poolName();
  const opened: Array<LocalPool<postgres.Sql>> = [];
  return {
    admin,
    role,
    sampler,
    log,
    pool,
    async open(extra = {}) {
      const p = await localPool(poolEnv(pool, { LEASE_LIMIT: String(limit), ...extra }), {
        driver: leasedDriver<postgres.Sql>(role.url, log),
      });
      opened.push(p);
      return p;
    },
    async end() {
      await sampler.stop().catch(() => {});
      for (const p of opened) await p.close().catch(() => {});
      await role.drop();
      await forgetPools(admin, pool);
      await probe.end({ timeout: 1 });
      await admin.end({ timeout: 1 });
    },
  };
}

/** A call's outcome, when it came (this process's clock). */
export type Outcome<T> =
  | { settled: true; ok: true; value: T; at: number }
  | { settled: true; ok: false; code: string; executed: unknown; error: unknown; at: number }
  | { settled: false; at: number };

/**
 * Watches `promise` and answers its outcome; `within(ms)` waits at most that long (a call the old
 * code never answers is reported unsettled, not hung on).
 *
 * @example
 * const call = watch(pool.sql((sql) => sql`SELECT pg_sleep(5)`));
 * const outcome = await call.within(8000);
 */
export function watch<T>(promise: Promise<T>): { outcome(): Outcome<T>; within(ms: number): Promise<Outcome<T>> } {
  let outcome: Outcome<T> = { settled: false, at: 0 };
  const done = promise.then(
    (value) => {
      outcome = { settled: true, ok: true, value, at: Date.now() };
    },
    (error: unknown) => {
      const executed = (error as { executed?: unknown } | null)?.executed;
      outcome = { settled: true, ok: false, code: codeOf(error), executed, error, at: Date.now() };
    },
  );
  return {
    outcome: () => outcome,
    async within(ms) {
      await Promise.race([done, sleep(ms)]);
      return outcome.settled ? outcome : { settled: false, at: Date.now() };
    },
  };
}

/** Polls `read` every 5 ms until `ok`; the time it held, or null after `timeoutMs`. */
export async function waitFor(ok: () => boolean | Promise<boolean>, timeoutMs: number): Promise<number | null> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await ok()) return Date.now();
    await sleep(5);
  }
  return null;
}

/** The leased backend running a statement whose text contains `marker`. */
export const running = (marker: string) => (b: { query: string; state: string | null }) =>
  b.state === "active" && b.query.includes(marker);

/** The application name of the leased connection that ran the statement containing `marker` ("" if none did). */
export function holderApp(seen: Sampled, marker: string): string {
  for (const sample of seen.samples) for (const b of sample.backends) if (running(marker)(b)) return b.app;
  return "";
}

/** Waits (at most `timeoutMs`) until a sample shows a backend running `marker`; throws if none did. */
export async function untilRunning(sampler: Sampler, marker: string, timeoutMs = 3000): Promise<void> {
  await sampler
    .until((s) => s.backends.some(running(marker)), timeoutMs)
    .catch((cause: unknown) => {
      throw new Error(`the holder's statement never showed in pg_stat_activity`, { cause });
    });
}

/**
 * A caller that runs `SELECT 1` through `pool.sql` as holder "next" (queued behind the scenario's
 * holder), watched; `granted` hears when its lease and connection were had (this process's clock).
 *
 * @example
 * const queued = nextCaller(b, { waitMs: 5000 }, (at) => { nextGrantedAt = at; }); ...; await queued.within(8000);
 */
export function nextCaller(pool: LocalPool<postgres.Sql>, options: { waitMs?: number }, granted: (at: number) => void) {
  return watch(
    pool.sql(
      async (sql) => {
        granted(Date.now());
        return await sql`SELECT 1 AS one`;
      },
      { holder: "next", ...options },
    ),
  );
}

/** The end of every scenario's report line: peak, refused logins, lingering backends, sampling gaps. */
export function sceneFigures(s: Scene, seen: Sampled | undefined): string {
  return (
    ` peak ${seen?.peak()}; refused logins ${s.log.refused.map((r) => r.code).join(",") || "none"};` +
    ` lingering ${JSON.stringify(seen?.lingering(s.log.closed))}; sampling ${JSON.stringify(seen?.gaps())}`
  );
}

/**
 * Waits (at most `timeoutMs`) until the latest sample shows no backend running `marker`, so a
 * report covers the old code's run-on too, then samples `tailMs` more.
 */
export async function untilGone(sampler: Sampler, marker: string, timeoutMs: number, tailMs = 200): Promise<void> {
  await waitFor(() => !sampler.samples.at(-1)!.backends.some(running(marker)), timeoutMs);
  await sleep(tailMs);
}

/**
 * A TCP proxy to a Postgres port that can be cut (`block()`: bytes stop flowing both ways and new
 * connections hang — a partition, not a refusal) and restored (`unblock()`: held bytes flow again).
 *
 * @example
 * const proxy = await cuttableProxy(5432); ... DATABASE_URL through proxy.port ...; proxy.block();
 */
export async function cuttableProxy(targetPort: number, targetHost = "127.0.0.1") {
  const pairs = new Set<{ a: Socket; b: Socket }>();
  let blocked = false;
  const server: Server = createServer((a) => {
    const b = connect(targetPort, targetHost);
    const pair = { a, b };
    pairs.add(pair);
    const pipe = (from: Socket, to: Socket) => {
      from.on("data", (chunk) => void to.write(chunk));
      from.on("error", () => to.destroy());
      from.on("close", () => {
        to.destroy();
        pairs.delete(pair);
      });
    };
    pipe(a, b);
    pipe(b, a);
    if (blocked) {
      a.pause();
      b.pause();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    /** `url` with its host and port pointed at the proxy. */
    via(url: string): string {
      const u = new URL(url);
      u.hostname = "127.0.0.1";
      u.port = String(port);
      return u.toString();
    },
    block() {
      blocked = true;
      for (const { a, b } of pairs) {
        a.pause();
        b.pause();
      }
    },
    unblock() {
      blocked = false;
      for (const { a, b } of pairs) {
        a.resume();
        b.resume();
      }
    },
    async close() {
      for (const { a, b } of pairs) {
        a.destroy();
        b.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
