import { holdLease } from "../client/hold.ts";
import type { LeaseClient, WaitUntil } from "../client/leases.ts";
import { type LeaseGrant, LeaseError, isLeaseError } from "../core/index.ts";
import { CircuitBreaker } from "./circuit-breaker.ts";
import type { DatabaseConfig } from "./config.ts";
import type { Connection, Driver, Row } from "./driver.ts";
import { toDatabaseError } from "./errors.ts";
import { type RetryOptions, isRetryable, retry } from "./retry.ts";
import { SafeMode } from "./safe-mode.ts";
import { serializeError } from "./safe-error.ts";
import { slowQueryLog } from "./slow-query.ts";
import { writeLogLine } from "./log.ts";

/** Clock, randomness and timers, injected so every policy is testable on real time without fakes. */
export interface Runtime {
  now(): number;
  random(): number;
  sleep(ms: number): Promise<void>;
  /** Runs `fn` after `ms`; returns the function that cancels it. */
  setTimer(fn: () => void, ms: number): () => void;
}

export const SYSTEM_RUNTIME: Runtime = {
  now: () => Date.now(),
  // Jitter only, never an id; from the same source as lease ids all the same.
  random: () => crypto.getRandomValues(new Uint32Array(1))[0]! / 2 ** 32,
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  setTimer(fn, ms) {
    const id = setTimeout(fn, ms);
    return () => clearTimeout(id);
  },
};

/** Per call: who asks (shown to operators), how long to queue for a slot, the whole budget. */
export interface CallOptions {
  holder?: string | undefined;
  /** Queue deadline for the lease, ms; capped by what is left of `deadlineMs`. Default: the pool's. */
  waitMs?: number | undefined;
  /** The request's whole budget for this call, retries included, ms. Default: the database's. */
  deadlineMs?: number | undefined;
}

/** What one attempt may use: the lease it runs under (none on the safe-mode budget or without a coordinator) and a cleanup hook. */
export interface AttemptScope {
  readonly lease: LeaseGrant | undefined;
  /** Runs `cleanup` before the slot is given back (close the connection the lease pays for). */
  beforeRelease(cleanup: () => Promise<unknown> | unknown): void;
}

/** A transaction's handle: queries on the one connection, inside BEGIN … COMMIT. */
export interface Transaction {
  /** One statement in the transaction; `R` types the rows (not checked at run time). */
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

export interface DatabaseOptions {
  /** The pool's name (`LEASE_POOL`): names the breaker and the log lines. */
  name: string;
  driver: Driver;
  /** The pool's leases; undefined runs without a coordinator (`COORDINATOR=off`). */
  leases: LeaseClient | undefined;
  config: Pick<DatabaseConfig, "deadlineMs" | "slowQueryMs" | "secrets" | "safeMode" | "breaker"> & {
    retry: RetryOptions;
    logDetail?: boolean | undefined;
  };
  /** The breaker to use; pass one kept at module scope so it outlives a request. */
  breaker?: CircuitBreaker | undefined;
  safeMode?: SafeMode | undefined;
  /** Lease lifetime asked for, ms. Default: the pool's TTL (`LEASE_TTL_MS`). */
  leaseTtlMs?: number | undefined;
  /**
   * Long work renews its lease every this many ms (the client's heartbeat); `0` turns renewal off.
   * Default: a third of the lease's lifetime, so a statement shorter than that makes no extra call.
   */
  heartbeatMs?: number | undefined;
  /** Workers: `ctx.waitUntil`, so closing and releasing run off the response path. */
  waitUntil?: WaitUntil | undefined;
  runtime?: Runtime | undefined;
  /** Where JSON log lines go (slow queries, final failures). Default: `writeLogLine` (stdout). */
  log?: ((line: string) => void) | undefined;
}

/**
 * Querying under leases with the failure policies around it: a circuit breaker per database,
 * retries with full-jitter backoff for retryable failures within the request's deadline, the
 * safe mode when the coordinator is unavailable, lease renewal for long work, a slow-query log and
 * bounded, redacted error logs. One call = one lease = one connection.
 *
 * @example
 * const db = new Database({ name: "main", driver: bindDriver(driver, config), leases, config });
 * const rows = await db.query("SELECT * FROM pitches WHERE id = $1", [id], { holder: requestId });
 * await db.transaction(async (tx) => { await tx.query("UPDATE …"); await tx.query("INSERT …"); });
 */
export class Database {
  readonly name: string;
  readonly breaker: CircuitBreaker;
  readonly safeMode: SafeMode;
  readonly #o: DatabaseOptions;
  readonly #rt: Runtime;
  readonly #log: (line: string) => void;
  readonly #slow: ReturnType<typeof slowQueryLog>;

  constructor(options: DatabaseOptions) {
    this.name = options.name;
    this.#o = options;
    this.#rt = options.runtime ?? SYSTEM_RUNTIME;
    this.#log = options.log ?? writeLogLine;
    this.breaker =
      options.breaker ?? new CircuitBreaker(options.name, options.config.breaker, undefined, () => this.#rt.now());
    this.safeMode = options.safeMode ?? new SafeMode(options.config.safeMode);
    this.#slow = slowQueryLog({
      thresholdMs: options.config.slowQueryMs,
      database: options.name,
      write: this.#log,
      detail: options.config.logDetail,
    });
  }

  /**
   * One statement under one lease. Throws `DATABASE_UNAVAILABLE` (503: down, circuit open),
   * `DATABASE_ERROR` (500: the statement failed), `QUEUE_FULL` / `ACQUIRE_TIMEOUT` /
   * `COORDINATOR_UNAVAILABLE` (503).
   *
   * @example
   * const [row] = await db.query("SELECT count(*)::int AS n FROM pitches");
   */
  async query<R = Row>(text: string, params: readonly unknown[] = [], options: CallOptions = {}): Promise<R[]> {
    return this.run(async (scope) => {
      const conn = await this.#connect(scope);
      return (await this.#timed(conn, text, params, options.holder)) as R[];
    }, options);
  }

  /**
   * Runs `fn` in one transaction on one connection under one lease: COMMIT when it returns,
   * ROLLBACK when it throws (the error is rethrown). A serialization failure or deadlock reruns the
   * whole transaction, so `fn` may run more than once: keep effects outside the database out of it.
   *
   * @example
   * await db.transaction(async (tx) => {
   *   const [{ id }] = await tx.query("INSERT INTO pitches (…) VALUES (…) RETURNING id");
   *   await tx.query("UPDATE authors SET pitches = pitches + 1 WHERE name = $1", [author]);
   * });
   */
  async transaction<T>(fn: (tx: Transaction) => Promise<T>, options: CallOptions = {}): Promise<T> {
    return this.run(async (scope) => {
      const conn = await this.#connect(scope);
      const tx: Transaction = {
        query: <R = Row>(text: string, params: readonly unknown[] = []) =>
          this.#timed(conn, text, params, options.holder) as Promise<R[]>,
      };
      await conn.query("BEGIN");
      let result: T;
      try {
        result = await fn(tx);
      } catch (error) {
        // A failed ROLLBACK means the connection is gone, and the server rolls back by itself.
        await conn.query("ROLLBACK").catch(() => {});
        throw error;
      }
      await conn.query("COMMIT");
      return result;
    }, options);
  }

  /**
   * The policies around any unit of database work: breaker, retries, lease (or safe-mode budget),
   * renewal, release after the cleanups. `work` runs once per attempt; errors leave as `LeaseError`s.
   *
   * @example
   * await db.run(async ({ beforeRelease }) => { const sql = connect(); beforeRelease(() => sql.end()); return sql`select 1`; });
   */
  async run<T>(work: (scope: AttemptScope) => Promise<T>, options: CallOptions = {}): Promise<T> {
    const rt = this.#rt;
    const deadline = rt.now() + (options.deadlineMs ?? this.#o.config.deadlineMs);
    try {
      return await retry(
        async () => {
          const gate = this.breaker.admit();
          if (!gate.allowed) throw circuitOpen(this.name, gate.retryAfterMs);
          try {
            const attempt: AttemptState = { phase: "acquiring", abandon: new AbortController() };
            const result = await this.#beforeDeadline(
              this.#underLease(work, options, deadline, attempt),
              deadline,
              attempt,
            );
            this.breaker.succeeded();
            return result;
          } catch (error) {
            const code = toDatabaseError(error).code;
            // Only the database being unreachable counts against it; a failed statement means it answered.
            if (code === "DATABASE_UNAVAILABLE") this.breaker.failed();
            else if (code === "DATABASE_ERROR") this.breaker.succeeded();
            throw error;
          }
        },
        this.#o.config.retry,
        { deadline, now: rt.now, random: rt.random, sleep: rt.sleep },
        isRetryable,
      );
    } catch (error) {
      const e = toDatabaseError(error);
      if (!isCircuitOpen(e)) {
        this.#log(
          JSON.stringify({
            event: "database_error",
            database: this.name,
            code: e.code,
            holder: options.holder?.slice(0, 100),
            breaker: this.breaker.state.state,
            error: serializeError(error, {
              secrets: this.#o.config.secrets,
              detail: this.#o.config.logDetail ?? false,
            }),
          }),
        );
      }
      throw e;
    }
  }

  /** Breaker and safe-mode state as plain data, for `/health` and stats. */
  status(): { breaker: ReturnType<CircuitBreaker["toJSON"]>; safeMode: ReturnType<SafeMode["toJSON"]> } {
    return { breaker: this.breaker.toJSON(), safeMode: this.safeMode.toJSON() };
  }

  async #connect(scope: AttemptScope): Promise<Connection> {
    const conn = await this.#o.driver.connect();
    scope.beforeRelease(() => conn.close());
    return conn;
  }

  /**
   * Times `fn` and writes a slow-query line when it took at least `SLOW_QUERY_MS`; `label` is the
   * statement (or, for a unit of several, what it is), never its parameters.
   *
   * @example
   * const rows = await db.timed("trending", () => sql`SELECT …`, holder);
   */
  async timed<T>(label: string, fn: () => Promise<T>, holder?: string): Promise<T> {
    const started = this.#rt.now();
    let ok = false;
    try {
      const result = await fn();
      ok = true;
      return result;
    } finally {
      this.#slow.record(label, this.#rt.now() - started, ok, holder);
    }
  }

  #timed(conn: Connection, text: string, params: readonly unknown[], holder: string | undefined): Promise<Row[]> {
    return this.timed(text, () => conn.query(text, params), holder);
  }

  // The caller gets an answer at the deadline at the latest. The abandoned attempt still finishes
  // in the background (a connect or statement cannot be recalled), then closes its connection and
  // gives its slot back; one still queued for a slot gives it back as soon as it is granted.
  #beforeDeadline<T>(running: Promise<T>, deadline: number, attempt: AttemptState): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const ms = Math.max(0, deadline - this.#rt.now());
      const cancel = this.#rt.setTimer(() => {
        const error =
          attempt.phase === "acquiring"
            ? new LeaseError("ACQUIRE_TIMEOUT", "No connection slot within the request's deadline", {
                retryAfterMs: 1000,
              })
            : new LeaseError("DATABASE_UNAVAILABLE", "The database did not answer within the request's deadline", {
                retryAfterMs: 1000,
                cause: { code: "DEADLINE_EXCEEDED" },
              });
        running.catch(() => {});
        attempt.abandon.abort(error);
        reject(error);
      }, ms);
      running.then(
        (value) => {
          cancel();
          resolve(value);
        },
        (error: unknown) => {
          cancel();
          reject(error);
        },
      );
    });
  }

  // One attempt on the one lease lifecycle; this layer adds the deadline (as the acquire's signal),
  // the safe mode (work without a lease when the coordinator is unreachable) and its log lines.
  #underLease<T>(
    work: (scope: AttemptScope) => Promise<T>,
    options: CallOptions,
    deadline: number,
    attempt: AttemptState,
  ): Promise<T> {
    const left = Math.max(0, deadline - this.#rt.now());
    const log = (code: string) => this.#log(JSON.stringify({ event: "lease_renew_failed", database: this.name, code }));
    return holdLease(
      this.#o.leases,
      (scope) => {
        attempt.phase = "working";
        return work(scope);
      },
      {
        holder: options.holder,
        waitMs: options.waitMs === undefined ? undefined : Math.min(options.waitMs, left),
        ttlMs: this.#o.leaseTtlMs,
        signal: attempt.abandon.signal,
        waitUntil: this.#o.waitUntil,
        heartbeatMs: this.#o.heartbeatMs,
        setTimer: this.#rt.setTimer,
        onRenewError: (error) => log(isLeaseError(error) ? error.code : "INTERNAL"),
        withoutLease: (error) => this.safeMode.fallback(error),
      },
    );
  }
}

interface AttemptState {
  phase: "acquiring" | "working";
  /** Aborted when the deadline passed: the caller has its answer, the attempt only cleans up. */
  readonly abandon: AbortController;
}

/**
 * The fail-fast answer of an open circuit: `DATABASE_UNAVAILABLE` with the time until the next probe.
 * Its cause is marked so retries stop at once.
 */
export function circuitOpen(name: string, retryAfterMs: number): LeaseError {
  return new LeaseError("DATABASE_UNAVAILABLE", `The database \`${name}\` is unavailable (circuit open)`, {
    retryAfterMs,
    cause: { circuit: "open" },
  });
}

/**
 * True for the error of an open circuit (no attempt was made).
 *
 * @example
 * if (isCircuitOpen(e)) metrics.fastFails++;
 */
export function isCircuitOpen(error: unknown): boolean {
  return isLeaseError(error) && (error.cause as { circuit?: unknown } | undefined)?.circuit === "open";
}
