import { type HeldScope, holdLease } from "../client/hold.ts";
import type { LeaseClient, WaitUntil } from "../client/leases.ts";
import { type Executed, type LeaseGrant, LeaseError, isLeaseError } from "../core/index.ts";
import { CircuitBreaker } from "./circuit-breaker.ts";
import type { DatabaseConfig } from "./config.ts";
import type { Connection, Driver, Row, SessionLimits } from "./driver.ts";
import { sqlState, toDatabaseError } from "./errors.ts";
import { type RetryOptions, isRetryable, retry } from "./retry.ts";
import { DEFAULT_RETRY_BUDGET, RetryBudget } from "./retry-budget.ts";
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
  /**
   * The work is safe to run twice (a read, an upsert): a failure that may have run — a backend
   * terminated or a connection lost mid-statement — is retried too. Default `false`: only failures
   * that cannot have run are (and serialization failures or deadlocks, which rolled back).
   */
  idempotent?: boolean | undefined;
}

/**
 * What one attempt may use: the lease it runs under (none on the safe-mode budget or without a
 * coordinator), a cleanup hook, the signal that tells it to stop, and a way to open a connection
 * that stops with it.
 */
export interface AttemptScope {
  readonly lease: LeaseGrant | undefined;
  /** Runs `cleanup` before the slot is given back (close the connection the lease pays for). */
  beforeRelease(cleanup: () => Promise<unknown> | unknown): void;
  /**
   * Aborted when the attempt must stop: its lease was lost (reason: `LEASE_LOST`) or the request's
   * deadline passed (reason: `DEADLINE_EXCEEDED`). The caller has its answer by then; what the
   * work still runs must stop, and connections opened with {@link AttemptScope.connect} do.
   */
  readonly signal: AbortSignal;
  /**
   * Opens one connection on `driver` for this attempt: it starts with `statement_timeout` from
   * what is left of the deadline (`DB_STATEMENT_TIMEOUT=startup`); when `signal` aborts, the
   * statement running on it is cancelled and it is closed; it is closed before the slot is given
   * back in any case. A failed connect throws `DATABASE_UNAVAILABLE`/`DATABASE_ERROR` with `executed: "no"`.
   */
  connect<C extends Connection>(driver: Driver<C>): Promise<C>;
}

// How often a backend checks that its client is still there while a statement runs (Postgres
// ≥ 14): a connection whose socket is closed without a cancel stops its statement within this.
const CONNECTION_CHECK_MS = 100;

// What a server answers at startup to a parameter it does not have (Postgres < 14) or a value it
// cannot take (a platform without the check: Windows; macOS before Postgres 15).
const REFUSED_PARAMETER = new Set(["42704", "22023"]);

// The cause of a deadline that passed while connecting: the database did not answer in time.
const CONNECTING = Object.freeze({ phase: "connect" });

// A statement that the server cancelled for its statement_timeout: the limit was set from the
// deadline, so it fires at the deadline or later (the statement started after the connect).
// Tolerance for the two clocks' timers firing in either order.
const DEADLINE_SLACK_MS = 20;

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
    /** Default `startup`: connections start with the deadline's `statement_timeout` (see `DB_STATEMENT_TIMEOUT`). */
    statementTimeout?: DatabaseConfig["statementTimeout"] | undefined;
    /** Default 100: `client_connection_check_interval`, ms; `0` sends none (see `DB_CONNECTION_CHECK_MS`). */
    connectionCheckMs?: number | undefined;
    /** Default on with {@link DEFAULT_RETRY_BUDGET}; `null` turns it off (see `DB_RETRY_BUDGET`). */
    retryBudget?: DatabaseConfig["retryBudget"] | undefined;
  };
  /** The breaker to use; pass one kept at module scope so it outlives a request. */
  breaker?: CircuitBreaker | undefined;
  /** The retry budget to use; pass one kept at module scope, like the breaker. `null`: none. */
  retryBudget?: RetryBudget | null | undefined;
  safeMode?: SafeMode | undefined;
  /** Lease lifetime asked for, ms. Default: the pool's TTL (`LEASE_TTL_MS`). */
  leaseTtlMs?: number | undefined;
  /**
   * Long work renews its lease every this many ms (the client's heartbeat); `0` turns renewal off.
   * Default: a third of the lease's lifetime, so a statement shorter than that makes no extra call.
   */
  heartbeatMs?: number | undefined;
  /**
   * `LEASE_ENFORCE=terminate`: each leased connection carries its lease in `application_name`
   * (see `SessionLimits.leaseId`), so the coordinator and reconciliation can end its backend.
   */
  tagLeases?: boolean | undefined;
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
  /** Null with `DB_RETRY_BUDGET=off`. */
  readonly retryBudget: RetryBudget | null;
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
    this.retryBudget =
      options.retryBudget !== undefined ? options.retryBudget : retryBudgetFor(options.name, options.config, this.#rt);
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
   * `DATABASE_ERROR` (500: the statement failed), `DEADLINE_EXCEEDED` (504: the deadline passed;
   * the statement was cancelled), `LEASE_LOST` (503: the lease ended mid-statement; cancelled too),
   * `QUEUE_FULL` / `ACQUIRE_TIMEOUT` / `COORDINATOR_UNAVAILABLE` (503). `executed` says whether
   * the statement may have run.
   *
   * @example
   * const [row] = await db.query("SELECT count(*)::int AS n FROM pitches");
   */
  async query<R = Row>(text: string, params: readonly unknown[] = [], options: CallOptions = {}): Promise<R[]> {
    return this.#run(
      async (scope, attempt) => {
        const conn = await scope.connect(this.#o.driver);
        return (await this.#timed(conn, text, params, options.holder, attempt, true)) as R[];
      },
      options,
      "statements",
    );
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
    return this.#run(
      async (scope, attempt, deadline) => {
        const conn = await scope.connect(this.#o.driver);
        // Statements inside the transaction do not count as run: cut off before COMMIT, the
        // server rolls it all back. Only a COMMIT sent and unanswered leaves it "maybe".
        const tx: Transaction = {
          query: <R = Row>(text: string, params: readonly unknown[] = []) =>
            this.#timed(conn, text, params, options.holder, attempt, false) as Promise<R[]>,
        };
        await conn.query(this.#begin(deadline));
        let result: T;
        try {
          result = await fn(tx);
        } catch (error) {
          // A failed ROLLBACK means the connection is gone, and the server rolls back by itself.
          await conn.query("ROLLBACK").catch(() => {});
          throw error;
        }
        attempt.assertHeld();
        attempt.sent = true;
        await conn.query("COMMIT");
        return result;
      },
      options,
      "statements",
    );
  }

  /**
   * The policies around any unit of database work: breaker, retries, lease (or safe-mode budget),
   * renewal, the deadline and a lost lease (the scope's `signal`; connections opened with
   * `scope.connect` are cancelled and closed then), release after the cleanups. `work` runs once
   * per attempt; errors leave as `LeaseError`s. Whether work of its own ran is not known here: a
   * deadline or a lost lease mid-work says `executed: "maybe"`.
   *
   * @example
   * await db.run(async ({ connect }) => (await connect(driver)).query("select 1"));
   */
  async run<T>(work: (scope: AttemptScope) => Promise<T>, options: CallOptions = {}): Promise<T> {
    return this.#run((scope) => work(scope), options, "opaque");
  }

  async #run<T>(
    work: (scope: AttemptScope, attempt: Attempt, deadline: number) => Promise<T>,
    options: CallOptions,
    kind: Attempt["kind"],
  ): Promise<T> {
    const rt = this.#rt;
    const deadline = rt.now() + (options.deadlineMs ?? this.#o.config.deadlineMs);
    try {
      return await retry(
        async () => {
          const gate = this.breaker.admit();
          if (!gate.allowed) throw circuitOpen(this.name, gate.retryAfterMs);
          try {
            const result = await this.#attempt(work, options, deadline, kind);
            this.breaker.succeeded();
            return result;
          } catch (error) {
            const e = toDatabaseError(error);
            const code = e.code;
            // Only the database being unreachable counts against it (a connect it did not answer
            // by the deadline too); a failed statement means it answered. A slow statement or a
            // lost lease says nothing either way: neither counts.
            if (code === "DATABASE_UNAVAILABLE" || e.cause === CONNECTING) this.breaker.failed();
            else if (code === "DATABASE_ERROR") this.breaker.succeeded();
            throw error;
          }
        },
        this.#o.config.retry,
        { deadline, now: rt.now, random: rt.random, sleep: rt.sleep },
        (error) => isRetryable(error, options.idempotent === true),
        this.retryBudget ?? undefined,
      );
    } catch (error) {
      const e = toDatabaseError(error);
      if (!isCircuitOpen(e)) {
        this.#log(
          JSON.stringify({
            event: "database_error",
            database: this.name,
            code: e.code,
            executed: e.executed,
            holder: options.holder?.slice(0, 100),
            breaker: this.breaker.state.state,
            retryBudget: this.retryBudget?.refusedRetryOf(error) ? "refused" : undefined,
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

  /** Breaker, retry budget and safe-mode state as plain data, for `/health` and stats. */
  status(): {
    breaker: ReturnType<CircuitBreaker["toJSON"]>;
    retryBudget: ReturnType<RetryBudget["toJSON"]> | null;
    safeMode: ReturnType<SafeMode["toJSON"]>;
  } {
    return {
      breaker: this.breaker.toJSON(),
      retryBudget: this.retryBudget?.toJSON() ?? null,
      safeMode: this.safeMode.toJSON(),
    };
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

  #timed(
    conn: Connection,
    text: string,
    params: readonly unknown[],
    holder: string | undefined,
    attempt: Attempt,
    lasting: boolean,
  ): Promise<Row[]> {
    // The holder's own clock first: after a stall past the lease's end, nothing more is sent.
    attempt.assertHeld();
    if (lasting) attempt.sent = true;
    return this.timed(text, () => conn.query(text, params), holder);
  }

  // One attempt, answered at the first of: its result, its deadline, the loss of its lease. At the
  // deadline or the loss the attempt is told to stop (`attempt.stop`): connections it opened cancel
  // their statement and close; only then does the lifecycle give the slot back. One still queued
  // for a slot is withdrawn, and a slot granted after that is given back as soon as it arrives.
  #attempt<T>(
    work: (scope: AttemptScope, attempt: Attempt, deadline: number) => Promise<T>,
    options: CallOptions,
    deadline: number,
    kind: Attempt["kind"],
  ): Promise<T> {
    const attempt = new Attempt(kind);
    return new Promise<T>((resolve, reject) => {
      let answered = false;
      const answer = (error: unknown) => {
        if (answered) return;
        answered = true;
        cancelTimer();
        reject(error);
      };
      const cancelTimer = this.#rt.setTimer(
        () => {
          const error =
            attempt.phase === "acquiring"
              ? new LeaseError("ACQUIRE_TIMEOUT", "No connection slot within the request's deadline", {
                  retryAfterMs: 1000,
                  executed: "no",
                })
              : attempt.opening()
                ? new LeaseError(
                    "DEADLINE_EXCEEDED",
                    "The request's deadline passed while connecting to the database",
                    {
                      retryAfterMs: 1000,
                      executed: "no",
                      cause: CONNECTING,
                    },
                  )
                : deadlineExceeded(attempt.executed());
          attempt.stop.abort(error);
          answer(error);
        },
        Math.max(0, deadline - this.#rt.now()),
      );
      const stop = (error: LeaseError) => {
        attempt.stop.abort(error);
        answer(error);
      };
      this.#underLease(work, options, deadline, attempt, stop).then(
        (value) => {
          if (answered) return;
          answered = true;
          cancelTimer();
          resolve(value);
        },
        (error: unknown) => answer(this.#classify(error, attempt, deadline)),
      );
    });
  }

  // What a failed attempt answers. Errors of the lease lifecycle pass as they are; a driver's error
  // becomes a LeaseError that says whether the statement may have run.
  #classify(thrown: unknown, attempt: Attempt, deadline: number): unknown {
    if (attempt.stop.signal.aborted) return attempt.stop.signal.reason;
    // A driver whose client speaks its own codes says what they mean (`Connection.errorOf`).
    const error = attempt.connections.reduce((e, conn) => (conn.errorOf ? conn.errorOf(e) : e), thrown);
    const refused = this.#refusedCheck(error, attempt);
    if (refused) return refused;
    if (isLeaseError(error)) return error;
    // 57014 query_canceled: the connection's statement_timeout, set from the deadline.
    if (sqlState(error) === "57014" && this.#rt.now() >= deadline - DEADLINE_SLACK_MS)
      return deadlineExceeded(attempt.executed(), error);
    return toDatabaseError(error, attempt.failedWith(error));
  }

  // One attempt on the one lease lifecycle; this layer adds the deadline (as the acquire's signal),
  // the stop signal, the safe mode (work without a lease when the coordinator is unreachable) and
  // its log lines.
  #underLease<T>(
    work: (scope: AttemptScope, attempt: Attempt, deadline: number) => Promise<T>,
    options: CallOptions,
    deadline: number,
    attempt: Attempt,
    stop: (error: LeaseError) => void,
  ): Promise<T> {
    const left = Math.max(0, deadline - this.#rt.now());
    const log = (code: string) => this.#log(JSON.stringify({ event: "lease_renew_failed", database: this.name, code }));
    return holdLease(
      this.#o.leases,
      (held) => {
        attempt.phase = "working";
        // The lease ended while the work runs: answer now, and stop the work (cancel, close);
        // the lifecycle gives the slot back only after that.
        const lost = () => stop(leaseLost(attempt.executed(), held.signal.reason));
        if (held.signal.aborted) lost();
        else held.signal.addEventListener("abort", lost, { once: true });
        return work(this.#scope(held, attempt, deadline), attempt, deadline);
      },
      {
        holder: options.holder,
        waitMs: options.waitMs === undefined ? undefined : Math.min(options.waitMs, left),
        ttlMs: this.#o.leaseTtlMs,
        signal: attempt.stop.signal,
        waitUntil: this.#o.waitUntil,
        heartbeatMs: this.#o.heartbeatMs,
        setTimer: this.#rt.setTimer,
        onRenewError: (error) => log(isLeaseError(error) ? error.code : "INTERNAL"),
        withoutLease: (error) => this.safeMode.fallback(error),
      },
    );
  }

  #scope(held: HeldScope, attempt: Attempt, deadline: number): AttemptScope {
    const { signal } = attempt.stop;
    attempt.assertHeld = () => held.assertHeld();
    return {
      lease: held.lease,
      beforeRelease: held.beforeRelease,
      signal,
      connect: async <C extends Connection>(driver: Driver<C>): Promise<C> => {
        let conn: C;
        attempt.connecting = true;
        try {
          const limits = this.#limits(deadline);
          const leaseId = this.#o.tagLeases ? held.lease?.id : undefined;
          conn = await driver.connect(leaseId ? { ...limits, leaseId } : limits);
        } catch (error) {
          throw toDatabaseError(error, "no");
        } finally {
          attempt.connecting = false;
        }
        attempt.connections.push(conn);
        // Closing alone does not stop a running statement (the backend notices a closed socket
        // only at its next check, or when it next writes): cancel first, then close. Stopping
        // and the release's cleanup share one close, so the slot waits for it.
        let stopping: Promise<void> | undefined;
        const halt = () => (stopping ??= conn.cancel().then(() => conn.close()));
        held.beforeRelease(() => stopping ?? conn.close());
        if (signal.aborted) {
          await halt();
          throw signal.reason;
        }
        signal.addEventListener("abort", () => void halt(), { once: true });
        return conn;
      },
    };
  }

  // A server that refuses the connection's check interval at startup refuses every connection:
  // say which setting to change instead of a query error on every call.
  #refusedCheck(error: unknown, attempt: Attempt): LeaseError | undefined {
    if (!this.#limits(this.#rt.now())?.connectionCheckMs) return undefined;
    // Refused at connect (wrapped there, executed "no") or, for a lazy client, before its first query was sent.
    const atConnect = isLeaseError(error) && error.executed === "no" && attempt.phase === "working";
    const cause = atConnect ? error.cause : error;
    if (!REFUSED_PARAMETER.has(sqlState(cause) ?? "") || !(atConnect || attempt.opening())) return undefined;
    return new LeaseError(
      "INVALID_CONFIG",
      "The database refused `client_connection_check_interval` at connect (Postgres before 14, or a platform without it): set `DB_CONNECTION_CHECK_MS=0`",
      { cause, executed: "no" },
    );
  }

  // A transaction carries the deadline itself too, in the same round trip as its BEGIN: a pooler in
  // transaction mode (Hyperdrive, PgBouncer) drops or resets startup parameters, but applies a SET
  // LOCAL for the transaction it runs in.
  #begin(deadline: number): string {
    const limits = this.#limits(deadline);
    if (!limits?.statementTimeoutMs) return "BEGIN";
    const ms = Math.ceil(limits.statementTimeoutMs);
    return `BEGIN; SET LOCAL statement_timeout = ${ms}; SET LOCAL idle_in_transaction_session_timeout = ${ms}`;
  }

  #limits(deadline: number): SessionLimits | undefined {
    if ((this.#o.config.statementTimeout ?? "startup") === "off") return undefined;
    const check = this.#o.config.connectionCheckMs ?? CONNECTION_CHECK_MS;
    return {
      statementTimeoutMs: Math.max(1, deadline - this.#rt.now()),
      connectionCheckMs: check > 0 ? check : undefined,
    };
  }
}

/**
 * A new retry budget for a database as `config` asks (`DB_RETRY_BUDGET`), or null when it is off.
 * `workerPool` keeps the one it makes per pool per isolate.
 *
 * @example
 * const retryBudget = retryBudgetFor("main", config, SYSTEM_RUNTIME);
 */
export function retryBudgetFor(
  name: string,
  config: { retryBudget?: DatabaseConfig["retryBudget"] | undefined },
  runtime: Pick<Runtime, "now" | "random"> = SYSTEM_RUNTIME,
): RetryBudget | null {
  const options = config.retryBudget === undefined ? DEFAULT_RETRY_BUDGET : config.retryBudget;
  return options && new RetryBudget(name, options, { now: () => runtime.now(), random: () => runtime.random() });
}

/** What one attempt has done so far, for its answer's `executed`. */
class Attempt {
  phase: "acquiring" | "working" = "acquiring";
  /** A statement whose effect could last was sent (a single statement, or a transaction's COMMIT). */
  sent = false;
  /** A connection is being opened for the attempt (`scope.connect`). */
  connecting = false;
  /** The connections opened for the attempt. */
  readonly connections: Connection[] = [];
  /** Aborted (with the caller's answer) when the deadline passed or the lease was lost. */
  readonly stop = new AbortController();
  /** Throws once the lease has ended, by the holder's own clock too (`LeaseScope.assertHeld`). */
  assertHeld: () => void = () => {};
  /** `statements`: the database layer's own query or transaction, whose statements it sees; `opaque`: `run(work)`. */
  readonly kind: "statements" | "opaque";

  constructor(kind: "statements" | "opaque") {
    this.kind = kind;
  }

  /** Whether the attempt is still opening its connection: nothing it runs has reached the database. */
  opening(): boolean {
    return this.connecting || this.connections.some((c) => c.waiting?.() === true);
  }

  /** Whether work cut off now may have run. */
  executed(): Executed {
    if (this.phase === "acquiring" || this.opening()) return "no";
    if (this.kind === "statements") return this.sent ? "maybe" : "no";
    return "maybe";
  }

  /** Whether the statement behind a driver's `error` ran. */
  failedWith(error: unknown): Executed {
    if (this.phase === "acquiring" || this.opening()) return "no";
    if (this.kind === "statements" && !this.sent) return "no";
    // An error the server answered for the statement: it failed, and its transaction rolled back.
    // A lost connection leaves it unknown.
    const state = sqlState(error);
    const serverError = state !== undefined && !/^(08|57P)/.test(state);
    if (this.kind === "statements" && serverError) return "no";
    return "maybe";
  }
}

function deadlineExceeded(executed: Executed, cause?: unknown): LeaseError {
  return new LeaseError(
    "DEADLINE_EXCEEDED",
    "The request's deadline passed while its statement ran: the statement was cancelled and its connection closed",
    { retryAfterMs: 1000, executed, cause },
  );
}

function leaseLost(executed: Executed, cause: unknown): LeaseError {
  return new LeaseError(
    "LEASE_LOST",
    "The lease ended while the work ran: its statement was cancelled and its connection closed",
    { retryAfterMs: 1000, executed, cause },
  );
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
