import type { Sql } from "postgres";
import {
  type AcquireOptions,
  type AcquireResult,
  type ConnectionCounts,
  type ControlResult,
  type Effects,
  type Failure,
  type LearnFailure,
  type LearnResult,
  type LearnSettings,
  type LearnedLimit,
  type LeaseRef,
  type OperatorStats,
  type PoolConfig,
  type PoolState,
  type PoolStats,
  type ReconcileResult,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  type RoomReading,
  FIXED_LIMIT,
  LeaseError,
  checkReading,
  checkCountsFit,
  compareConnections,
  expected,
  isLeaseError,
  learnState,
  learnedLimit,
  stats,
  tick,
  validateConfig,
  withCaps,
} from "../src/core/index.ts";
import { toDatabaseError } from "../src/db/errors.ts";
import { readRoomCounts } from "../src/db/learn-limit.ts";
import { countConnections } from "../src/db/reconcile.ts";
import {
  type AcquireAnswer,
  type CoordinatorBackend,
  WakeTimer,
  Waiters,
  checkCounts,
  failureOf,
  guarded,
  settlementsOf,
  steps,
} from "../src/engine/index.ts";
import { learnOnce, noteLearnFailure, readRecord, writeLearned } from "./learn.ts";
import { deliver } from "./notify.ts";
import { type Loaded, loadPool } from "./rows.ts";
import { ensureSchema } from "./schema.ts";
import { type LocalStep, Transitions, giveBack } from "./transitions.ts";

/**
 * Options of a {@link PostgresCoordinator}.
 *
 * @example
 * const options: PostgresCoordinatorOptions = { sql, pool: "main", config: configFromEnv(process.env) };
 */
export interface PostgresCoordinatorOptions {
  /**
   * A postgres.js client for the coordinator's own bookkeeping (not the connections the leases pay
   * for). Each transition takes one connection for one short transaction; `sql.listen` takes one more.
   */
  sql: Sql;
  /** Pool name: every process using the same name and database shares one limit and one queue. */
  pool?: string | undefined;
  /**
   * The pool's limits. Written to the pool's row when this coordinator starts, so the process that
   * started last sets them for everyone (as a redeploy with new env vars would).
   */
  config: PoolConfig;
  /**
   * Wait for each transition's commit to reach disk (`synchronous_commit = on`). Off by default:
   * a commit then costs no fsync (~1.2 ms here, and transitions of a pool are serialized), and a
   * Postgres crash can lose only the last fraction of a second of transitions — whose holders lost
   * their database connections in the same crash. The price: after such a crash, fence numbers of
   * lost grants can be issued again. Turn it on when fences guard writes outside this database.
   */
  durableCommits?: boolean | undefined;
  /**
   * `LEASE_LIMIT=auto` (`learnSettingsFromEnv`): learn the limit from the database at start and
   * every `intervalMs`, one process at a time. `applicationName` names the connections the leases
   * pay for; every other connection, this client's own included, is room taken.
   */
  learn?: (LearnSettings & { applicationName: string }) | null | undefined;
  /**
   * `LEASE_ENFORCE=terminate`: a transition that reaps expired leases terminates the backends
   * tagged with them (see `SessionLimits.leaseId`) and waits for them to exit before it commits,
   * so the freed slot is granted only once the old backend is gone. This client's role needs the
   * right to signal the holders' backends (the same role, membership in theirs, or
   * `pg_signal_backend`); without it the reap goes on without terminating.
   */
  enforce?: boolean | undefined;
}

const POOL_NAME = /^[A-Za-z0-9_.:-]{1,48}$/;

const CLOSED: Failure = {
  ok: false,
  code: "COORDINATOR_UNAVAILABLE",
  message: "The coordinator was closed",
  retryAfterMs: 100,
};
const ABORTED: Failure = {
  ok: false,
  code: "ACQUIRE_TIMEOUT",
  message: "The caller gave up the wait (its signal aborted)",
  retryAfterMs: 0,
};

/**
 * A {@link CoordinatorBackend} for Node and Deno: the same engine as the Durable Object (`src/core/`
 * decisions, `src/engine/` answers, waiters, timer and group commit), with the pool's state in
 * Postgres so any number of OS processes share one limit and one FIFO queue.
 *
 * Every transition is one transaction serialized by `pg_advisory_xact_lock(hashtext(pool))`: load
 * the pool → run the calls' steps → write back the difference → commit. Waiters are rows ordered by
 * a sequence, so a slot freed by process B goes to the oldest waiter even when it lives in process
 * A; the transition that grants it sends a `NOTIFY` on the pool's channel naming the lease, and the
 * waiting process answers its caller from the notice. The only timers are a waiter's deadline and
 * the pool's next lease expiry (a dead holder's slot is reaped then); nothing polls.
 *
 * @example
 * const sql = postgres(process.env.DATABASE_URL!);
 * const coordinator = new PostgresCoordinator({ sql, pool: "main", config: configFromEnv(process.env) });
 * const leases = new Leases(coordinator, { holder: `pid ${process.pid}` });
 * await leases.withLease(() => db`select 1`);
 */
export class PostgresCoordinator implements CoordinatorBackend {
  readonly pool: string;
  /** `acquire` takes an `AbortSignal`: `Leases` passes its caller's, and an abort withdraws the waiter. */
  readonly abortable = true;
  readonly #sql: Sql;
  readonly #config: PoolConfig;
  readonly #channel: string;
  readonly #waiters = new Waiters();
  readonly #timer = new WakeTimer(() => this.#onTimer());
  readonly #transitions: Transitions;
  #ready: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  /** Backend pid of our LISTEN connection, stamped on our waiter rows as proof of life. */
  #ownerPid: number | null = null;
  #closed = false;
  /** The pool as our last transition left it: its next lease expiry bounds our timer. */
  #lastState: PoolState | undefined;
  readonly #learn: (LearnSettings & { applicationName: string }) | null;
  #learnTimer: ReturnType<typeof setInterval> | undefined;
  /** The timer's learnings in flight. */
  readonly #learning = new Set<Promise<void>>();
  /** This process's last failed learning, when even noting it in the pool's row failed. */
  #learnFailure: LearnFailure | null = null;

  constructor(options: PostgresCoordinatorOptions) {
    if (typeof options !== "object" || options === null || typeof options.sql !== "function") {
      throw new LeaseError("INVALID_ARGUMENT", expected("options.sql", "a postgres.js client", options?.sql));
    }
    // One connection stays reserved for transitions; stats() and setup need another.
    const max = (options.sql as { options?: { max?: number } }).options?.max;
    if (typeof max === "number" && max < 2) {
      throw new LeaseError(
        "INVALID_ARGUMENT",
        expected("options.sql", "a postgres.js client with `max` of at least 2", `max: ${max}`),
      );
    }
    const pool = options.pool ?? "main";
    if (typeof pool !== "string" || !POOL_NAME.test(pool)) {
      throw new LeaseError("INVALID_ARGUMENT", expected("pool", "1 to 48 characters of A-Z a-z 0-9 _ . : -", pool));
    }
    this.pool = pool;
    this.#sql = options.sql;
    // The fixed counts fit the configured limit, or with `learn` the cap LEASE_LIMIT_MAX.
    this.#config = checkCountsFit(
      validateConfig(options.config),
      options.learn ? options.learn.limitMax : options.config.limit,
    );
    this.#channel = `leasegate.${pool}`;
    this.#learn = options.learn ?? null;
    this.#transitions = new Transitions({
      sql: options.sql,
      pool,
      channel: this.#channel,
      durable: options.durableCommits === true,
      enforce: options.enforce === true,
      ownerPid: () => this.#ownerPid,
      committed: (state, effects) => this.#committed(state, effects),
    });
  }

  /**
   * Creates the tables (once per database), writes this process's config to the pool's row and
   * starts listening for grants. Called by the first acquire/release/renew/stats; call it yourself
   * to fail fast at startup.
   *
   * @example
   * await coordinator.ready();
   */
  ready(): Promise<void> {
    this.#ready ??= this.#init().catch((error: unknown) => {
      this.#ready = undefined;
      throw error;
    });
    return this.#ready;
  }

  async #init(): Promise<void> {
    // LEASE_LIMIT=auto: learned before the pool's row is written, so a process that starts under
    // load sets the learned limit, not the start limit, for everyone.
    const learned = this.#learn && (await this.#firstLearning());
    await ensureSchema(this.#sql, this.pool, learned ? { ...this.#config, limit: learned.limit } : this.#config);
    if (learned) await this.#sql.begin((tx) => writeLearned(tx, this.pool, learned));
    // Listening starts before any waiter of ours is queued, so no grant can be missed.
    let first = true;
    const sub = await this.#sql.listen(
      this.#channel,
      (payload) => {
        deliver(this.#waiters, payload);
        this.#rearm();
      },
      () => {
        // Called again after postgres.js re-listens on a new connection: adopt its pid.
        if (first) first = false;
        else void this.#adoptListener().catch(() => {});
      },
    );
    this.#ownerPid = sub.state.pid;
    this.#unlisten = sub.unlisten;
    if (this.#learn && !this.#learnTimer && !this.#closed) {
      this.#learnTimer = setInterval(() => void this.#learnQuietly(false), this.#learn.intervalMs);
      // Learning alone never keeps a process alive (Node; Deno's timers have no unref here).
      (this.#learnTimer as { unref?: () => void }).unref?.();
    }
  }

  /**
   * The learning at start; null when it failed (the start limit applies until the next one). Our
   * own connections are room taken, also those not open yet: the client's pool is filled first,
   * and the LISTEN connection that opens next is counted in advance.
   */
  async #firstLearning(): Promise<LearnedLimit | null> {
    const learn = this.#learn!;
    try {
      const max = (this.#sql as { options?: { max?: number } }).options?.max ?? 1;
      await Promise.all(Array.from({ length: max }, () => this.#sql`SELECT 1`));
      const t = await readRoomCounts(this.#sql, learn.applicationName, learn.intervalMs);
      const listen = 1;
      return learnedLimit(
        withCaps(
          {
            ...t,
            othersOnServer: t.othersOnServer + listen,
            othersOfRole: t.othersOfRole + listen,
            othersInDatabase: t.othersInDatabase + listen,
          },
          learn,
        ),
        Date.now(),
      );
    } catch (error) {
      this.#learnFailure = learnFailureOf(error);
      return null;
    }
  }

  /** One learning of the interval timer: a failure keeps the last learned limit and is noted. */
  async #learnQuietly(force: boolean): Promise<void> {
    const learning = this.#learnNow(force).then(
      () => {},
      () => {},
    );
    this.#learning.add(learning);
    await learning;
    this.#learning.delete(learning);
  }

  async #learnNow(force: boolean): Promise<LearnedLimit | null> {
    const learn = this.#learn!;
    try {
      const { changed, record } = await learnOnce(this.#sql, this.pool, learn, force);
      this.#learnFailure = null;
      // A raise grants queued callers now; a drop revokes nothing (grants wait below the new limit).
      if (changed) await this.#transitions.run((state, now) => ({ answer: null, effects: tick(state, now) }));
      return record.learned;
    } catch (error) {
      const failure = learnFailureOf(error);
      this.#learnFailure = failure;
      await noteLearnFailure(this.#sql, this.pool, failure).catch(() => {});
      throw isLeaseError(error) ? error : toDatabaseError(error);
    }
  }

  /**
   * `LEASE_LIMIT=auto`: true when the learned limit in the pool's row is older than the interval
   * (or there is none). This backend learns on its own timer, one process at a time (an advisory
   * lock), so the answer claims nothing. Always false for a fixed limit.
   *
   * @example
   * if (await coordinator.learnDue()) await coordinator.learnLimit(await roomReading(() => readRoomCounts(sql, "my-app")));
   */
  async learnDue(): Promise<boolean> {
    if (!this.#learn) return false;
    await this.ready();
    const { learned } = await readRecord(this.#sql, this.pool);
    return learned === null || Date.now() - learned.learnedAt >= this.#learn.intervalMs;
  }

  /**
   * `LEASE_LIMIT=auto`: a reading of the database (`readRoomCounts`, outside any lease). The limit
   * is worked out with this coordinator's own caps, written to the pool's row (in force at once
   * for every process unless an operator's override holds) and queued callers a raise lets in are
   * granted. A failed reading is noted in the row (the limit stays) and answered as that failure.
   * A pool with a fixed limit answers `INVALID_ARGUMENT`.
   *
   * @example
   * const r = await coordinator.learnLimit(await roomReading(() => readRoomCounts(sql, "my-app")));
   */
  async learnLimit(reading: RoomReading): Promise<LearnResult> {
    try {
      if (!this.#learn) throw new LeaseError("INVALID_ARGUMENT", FIXED_LIMIT);
      await this.ready();
      const checked = checkReading(reading, Date.now());
      if (!checked.ok) {
        this.#learnFailure = checked.failure;
        await noteLearnFailure(this.#sql, this.pool, checked.failure).catch(() => {});
        return checked.answer;
      }
      const learned = learnedLimit(withCaps(checked.counts, this.#learn), Date.now());
      await this.#sql.begin((tx) => writeLearned(tx, this.pool, learned));
      this.#learnFailure = null;
      // A raise grants queued callers now; a drop revokes nothing (grants wait below the new limit).
      const pool = await this.#transitions.run((s, now) => ({
        answer: { limit: s.config.limit, limitOverride: s.limitOverride },
        effects: tick(s, now),
      }));
      return { ok: true, ...learnState(pool, learned, null, Date.now()) };
    } catch (error) {
      return failureOf(error);
    }
  }

  /** After a LISTEN reconnect: stamp our queued waiters with the new connection's pid. */
  async #adoptListener(): Promise<void> {
    const probe = await this.#sql.listen(this.#channel, () => {});
    await probe.unlisten();
    this.#ownerPid = probe.state.pid;
    const ids = this.#waiters.ids();
    if (ids.length > 0) {
      await this
        .#sql`UPDATE leasegate_waiters SET owner_pid = ${this.#ownerPid} WHERE pool = ${this.pool} AND id = ANY(${ids})`;
    }
  }

  /**
   * Asks for a slot: a lease at once, `QUEUE_FULL`, or a wait in global FIFO order until a slot
   * frees (a lease) or the deadline passes (`ACQUIRE_TIMEOUT`).
   *
   * With `signal`, an abort answers at once (`ACQUIRE_TIMEOUT`, `retryAfterMs: 0`) and withdraws
   * the waiter in the next transition; a slot granted in the meantime is released by it.
   *
   * @example
   * const r = await coordinator.acquire({ holder: "worker-1", waitMs: 2000 }, AbortSignal.timeout(1000));
   */
  async acquire(options: AcquireOptions = {}, signal?: AbortSignal): Promise<AcquireResult> {
    if (this.#closed) return CLOSED;
    if (signal?.aborted) return ABORTED;
    await this.ready();
    const leaseId = crypto.randomUUID();
    // Parked before the transaction: a grant by another process can be announced before our own
    // commit's answer reaches us.
    const answer = this.#waiters.park(leaseId, typeof options?.holder === "string" ? options.holder : "", Date.now());
    if (signal) {
      const onAbort = () => {
        this.#waiters.settle(leaseId, ABORTED);
        // After our acquire's own transition (calls run in order): leaves the queue, or gives
        // back a slot granted before the abort was seen.
        void this.#transitions
          .run((state, now) => ({ answer: null, effects: giveBack(state, [leaseId], now) }))
          .catch(() => {
            // The row times out at its deadline, a lease expires at its TTL.
          });
      };
      signal.addEventListener("abort", onAbort, { once: true });
      // Once answered, the caller owns the outcome: a later abort must not free a held lease.
      void answer.then(() => signal.removeEventListener("abort", onAbort));
    }
    let decided: AcquireAnswer | Failure;
    try {
      decided = await this.#transitions.run(guarded(steps.acquire(leaseId, options, true)));
    } catch (error) {
      this.#waiters.drop(leaseId);
      throw error;
    }
    if ("ok" in decided) {
      this.#waiters.drop(leaseId);
      return decided;
    }
    if (decided.kind === "result") this.#waiters.settle(leaseId, decided.result);
    else if (decided.kind === "queued") {
      this.#waiters.queued(leaseId, decided.deadline, decided.position);
      this.#rearm();
    }
    return await answer;
  }

  /**
   * Gives a slot back; an unknown id or stale fence fails with a code and frees nothing.
   *
   * @example
   * await coordinator.release({ leaseId: lease.id, fence: lease.fence });
   */
  release(ref: LeaseRef): Promise<ReleaseResult> {
    return this.#call(guarded(steps.release(ref)));
  }

  /**
   * Extends a live lease to now + `ttlMs` (default: the pool's TTL).
   *
   * @example
   * const r = await coordinator.renew({ leaseId: lease.id, fence: lease.fence }, 30_000);
   */
  renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult> {
    return this.#call(guarded(steps.renew(ref, ttlMs)));
  }

  /** One transition whose answer is a result object. */
  async #call<T>(step: LocalStep<T>): Promise<T> {
    await this.ready();
    return await this.#transitions.run(step);
  }

  /**
   * The pool's live state across all processes (a read: nothing is reaped by looking).
   *
   * @example
   * const { held, waiting, counters } = await coordinator.stats();
   */
  async stats(): Promise<PoolStats> {
    return stats((await this.#read()).state, Date.now());
  }

  async #read(): Promise<Loaded> {
    await this.ready();
    return await this.#sql.begin((tx) => loadPool(tx, this.pool));
  }

  // ── Operator controls: each is one transition, persisted in the pool's row for every process. ──

  /**
   * Stops granting in every process sharing the pool (drain, say before a migration): held leases
   * run on, callers queue and time out at their deadlines. Kept until `resume()`.
   *
   * @example
   * await coordinator.pause(); // wait until (await coordinator.stats()).held === 0, migrate, resume
   */
  pause(): Promise<ControlResult> {
    return this.#call(guarded(steps.pause(true)));
  }

  /**
   * Grants again; queued callers get free slots at once, in order.
   *
   * @example
   * await coordinator.resume();
   */
  resume(): Promise<ControlResult> {
    return this.#call(guarded(steps.pause(false)));
  }

  /**
   * Changes the pool's limit for every process and keeps it (also across restarts); `null` returns
   * to the configured one. Raising it grants queued callers at once; lowering it revokes nothing.
   *
   * @example
   * await coordinator.setLimit(20); await coordinator.setLimit(null);
   */
  setLimit(limit: number | null): Promise<ControlResult> {
    return this.#call((state, now, loaded) => guarded(steps.setLimit(limit, loaded.configured))(state, now));
  }

  /**
   * Frees a stuck lease by its id or an unambiguous prefix of at least 8 characters (stats show
   * the first 8). The holder's later release or renewal fails with `LEASE_NOT_FOUND`.
   *
   * @example
   * await coordinator.revoke("3f2a9c1b");
   */
  revoke(idOrPrefix: string): Promise<RevokeResult> {
    return this.#call(guarded(steps.revoke(idOrPrefix)));
  }

  /**
   * Compares connection counts from `pg_stat_activity` with the leases held now (across all
   * processes); the result is kept in the pool's row for `operatorStats()` in any process. Read
   * the counts with {@link countConnections} (this client's role, and the connections named
   * `applicationName`).
   *
   * @example
   * const r = await coordinator.reconcile(await coordinator.countConnections("my-app")); // r.ok && r.drift
   */
  async reconcile(counts: ConnectionCounts): Promise<ReconcileResult> {
    try {
      checkCounts(counts);
    } catch (error) {
      return failureOf(error);
    }
    const { held, limit } = await this.stats();
    const result = compareConnections({ held, limit }, counts, Date.now());
    await this
      .#sql`UPDATE leasegate_pools SET reconciliation = ${JSON.stringify(result)}::text::jsonb WHERE pool = ${this.pool}`;
    return { ok: true, ...result };
  }

  /**
   * Reads `pg_stat_activity` through this coordinator's own client: the connections of its role
   * on the whole server, and those that carry `applicationName` (the application's connections,
   * not the coordinator's). What {@link reconcile} compares. `pooler`: see `countConnections` in src/db/reconcile.ts.
   *
   * @example
   * const counts = await coordinator.countConnections("my-app"); // { roleConnections, appConnections, … }
   */
  async countConnections(applicationName: string, pooler: "none" | "transaction" = "none"): Promise<ConnectionCounts> {
    if (typeof applicationName !== "string")
      throw new LeaseError("INVALID_ARGUMENT", expected("applicationName", "a string", applicationName));
    await this.ready();
    return await countConnections(this.#sql, applicationName, pooler);
  }

  /**
   * `stats()` plus what only operators need: the limit override and the last reconciliation.
   *
   * @example
   * const { paused, limitOverride, reconciliation } = await coordinator.operatorStats();
   */
  async operatorStats(): Promise<OperatorStats> {
    const [{ state, reconciliation }, record] = await Promise.all([
      this.#read(),
      this.#learn ? readRecord(this.#sql, this.pool) : null,
    ]);
    const now = Date.now();
    const { limit: _, ...learning } = learnState(
      { limit: state.config.limit, limitOverride: state.limitOverride },
      record?.learned ?? null,
      record ? (record.learnFailure ?? this.#learnFailure) : null,
      now,
    );
    return { ...stats(state, now), limitOverride: state.limitOverride, reconciliation, ...learning };
  }

  /**
   * Stops listening and withdraws this process's waiters (they answer `COORDINATOR_UNAVAILABLE`).
   * Does not end the `sql` client, which the caller owns.
   *
   * @example
   * await coordinator.close(); await sql.end();
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer.clear();
    clearInterval(this.#learnTimer);
    // A learning in flight ends before close does: a closed coordinator writes no limit after it.
    await Promise.all(this.#learning);
    const ids = this.#waiters.ids();
    for (const id of ids) this.#waiters.settle(id, CLOSED);
    if (ids.length > 0 && this.#ready) {
      await this.#transitions
        .run((state, now) => ({ answer: null, effects: giveBack(state, ids, now) }))
        .catch(() => {
          // The rows time out at their deadlines (and expire at their TTL) on their own.
        });
    }
    await this.#unlisten?.().catch(() => {});
    this.#transitions.close();
  }

  /**
   * After each commit: answer our waiters it settled (the NOTIFY may come later or never), and
   * those another process settled whose notice we have not seen yet: the state we just read is
   * the truth.
   */
  #committed(state: PoolState, effects: Effects): void {
    this.#waiters.settleAll(settlementsOf(state, effects));
    this.#waiters.settleFrom(state);
    this.#lastState = state;
    this.#rearm();
  }

  /**
   * The wake timer: at the earliest of our callers' deadlines and the pool's next lease expiry as
   * of our last transition (a dead holder's slot frees only by time, in any process that saw it).
   * Grants themselves arrive by NOTIFY.
   */
  #rearm(): void {
    const state = this.#lastState;
    this.#timer.arm(this.#closed || !state ? null : this.#waiters.wakeAt(state));
  }

  #onTimer(): void {
    // A timer set for a lease expiry that was since renewed or released is harmless: the tick
    // finds nothing to reap and re-arms from the fresh state.
    this.#transitions
      .run((state, now) => ({ answer: null, effects: tick(state, now) }))
      .catch(() => {
        // The database is unreachable: try again shortly; our waiters still time out at deadlines.
        if (!this.#closed) this.#timer.retryIn(200);
      });
  }
}

/** A learning's failure as operators see it: when, the error's code and message. */
function learnFailureOf(error: unknown): LearnFailure {
  const e = isLeaseError(error) ? error : toDatabaseError(error);
  return { at: Date.now(), code: e.code, message: e.message };
}
