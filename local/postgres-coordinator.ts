import type { JSONValue, ReservedSql, Sql, TransactionSql } from "postgres";
import {
  type AcquireOptions,
  type AcquireResult,
  type AdaptiveState,
  type ControlResult,
  type Counters,
  type Effects,
  type Failure,
  type Histogram,
  type Lease,
  type LeaseGrant,
  type LeaseOutcome,
  type LeaseRef,
  type OperatorStats,
  type PoolConfig,
  type PoolState,
  type PoolStats,
  type Priority,
  type Reconciliation,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  type Waiter,
  BOUNDS,
  LeaseError,
  acquire,
  cancel,
  checkInt,
  compareConnections,
  createPool,
  expected,
  findByPrefix,
  isLeaseError,
  isScheduled,
  nextExpiryAt,
  reconfigure,
  release,
  renew,
  retryAfterHint,
  setPaused,
  stats,
  tick,
  validateConfig,
  withdraw,
} from "../src/core/index.ts";
import type { Coordinator } from "../src/client/leases.ts";
import { countConnections } from "../src/db/reconcile.ts";

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
}

/** A call waiting for the next transition. */
interface Call {
  step: StepFn<unknown>;
  resolve: (answer: unknown) => void;
  reject: (error: unknown) => void;
}

/** Calls per transition at most, so one transaction stays short. */
const MAX_BATCH = 256;

interface Pending {
  readonly holder: string;
  readonly enqueuedAt: number;
  deadline: number;
  resolve: (result: AcquireResult) => void;
  settled: boolean;
}

/** postgres.js types `sql.json` narrowly; our plain-data objects are JSON by construction. */
const asJson = (value: object): JSONValue => value as JSONValue;

/** Schema: created idempotently on first use; the DDL runs under a global advisory lock. */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS leasegate_pools (
  pool text PRIMARY KEY,
  next_fence bigint NOT NULL DEFAULT 1,
  config jsonb NOT NULL,
  counters jsonb NOT NULL,
  waits jsonb NOT NULL,
  hold_ms_sum double precision NOT NULL DEFAULT 0,
  hold_count bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leasegate_leases (
  pool text NOT NULL,
  id text NOT NULL,
  fence bigint NOT NULL,
  holder text NOT NULL,
  granted_at bigint NOT NULL,
  expires_at bigint NOT NULL,
  PRIMARY KEY (pool, id)
);
CREATE TABLE IF NOT EXISTS leasegate_waiters (
  pool text NOT NULL,
  id text NOT NULL,
  seq bigserial NOT NULL,
  holder text NOT NULL,
  enqueued_at bigint NOT NULL,
  deadline bigint NOT NULL,
  ttl_ms bigint NOT NULL,
  PRIMARY KEY (pool, id)
);
CREATE INDEX IF NOT EXISTS leasegate_waiters_order ON leasegate_waiters (pool, seq);
-- The backend pid of the waiting process's LISTEN connection: gone from pg_stat_activity = dead.
ALTER TABLE leasegate_waiters ADD COLUMN IF NOT EXISTS owner_pid integer;
-- Scheduling and operator state (added later: existing tables gain the columns in place).
ALTER TABLE leasegate_waiters ADD COLUMN IF NOT EXISTS priority text;
ALTER TABLE leasegate_waiters ADD COLUMN IF NOT EXISTS tenant text;
ALTER TABLE leasegate_leases ADD COLUMN IF NOT EXISTS priority text;
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false;
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS limit_override integer;
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS adaptive jsonb;
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS last_served jsonb NOT NULL DEFAULT '[]';
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS serve_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE leasegate_pools ADD COLUMN IF NOT EXISTS reconciliation jsonb;
`;

/** Any fixed number: the key of the advisory lock that serializes schema creation. */
const SCHEMA_LOCK = 7_401_310_001;

/**
 * The column SCHEMA adds last. When it exists the schema is current and no DDL runs: even a no-op
 * `ALTER TABLE … ADD COLUMN IF NOT EXISTS` takes an exclusive lock on its table, which would
 * deadlock against another process's transition holding row locks on the others. Move it when
 * SCHEMA grows.
 */
const SCHEMA_SENTINEL = { table: "leasegate_pools", column: "reconciliation" } as const;

const POOL_NAME = /^[A-Za-z0-9_.:-]{1,48}$/;
/** Grants per NOTIFY: a payload must stay under Postgres's 8000-byte limit. */
const NOTIFY_BATCH = 60;

function grantOf(lease: Lease): LeaseGrant {
  return { id: lease.id, fence: lease.fence, holder: lease.holder, grantedAt: lease.grantedAt, expiresAt: lease.expiresAt };
}

function leaseFailure(outcome: Exclude<LeaseOutcome, { status: "ok" }>): Failure {
  return { ok: false, code: outcome.code, message: outcome.message };
}

function timeoutResult(waitedMs: number, limit: number, retryAfterMs: number): AcquireResult {
  return {
    ok: false,
    code: "ACQUIRE_TIMEOUT",
    message: `Timed out after ${waitedMs} ms waiting for a connection slot (limit ${limit})`,
    retryAfterMs,
  };
}

/** The pool as loaded inside a transition, plus what is needed to write back only the difference. */
interface Loaded {
  state: PoolState;
  /** The limit an operator set (null: the configured one, `baseLimit`, applies). Written back. */
  limitOverride: number | null;
  baseLimit: number;
  reconciliation: Reconciliation | null;
  leasesBefore: Map<string, number>;
  queueBefore: Set<string>;
  /** Tenants' turns change only with `serveSeq`: unchanged, `last_served` is not rewritten. */
  serveSeqBefore: number;
  /** Waiters whose process's LISTEN connection is gone: nobody would ever take their grant. */
  dead: string[];
}

/** What one call's core step returns: its answer and the core's effects. */
interface Step<T> {
  answer: T;
  effects: Effects;
}

/** A core call run inside a transition, on the loaded state. */
type StepFn<T> = (state: PoolState, now: number, loaded: Loaded) => Step<T>;

/**
 * A {@link Coordinator} for Node and Deno: the same `src/core/` decisions as the Durable Object,
 * with the pool's state in Postgres so any number of OS processes share one limit and one FIFO queue.
 *
 * Every transition is one transaction serialized by `pg_advisory_xact_lock(hashtext(pool))`: load
 * the pool → run the core → write back the difference → commit. Waiters are rows ordered by a
 * sequence, so a slot freed by process B goes to the oldest waiter even when it lives in process A;
 * the transition that grants it sends a `NOTIFY` on the pool's channel naming the lease, and the
 * waiting process answers its caller from the payload. The only timers are a waiter's deadline and
 * the pool's next lease expiry (a dead holder's slot is reaped then); nothing polls.
 *
 * @example
 * const sql = postgres(process.env.DATABASE_URL!);
 * const coordinator = new PostgresCoordinator({ sql, pool: "main", config: configFromEnv(process.env) });
 * const leases = new Leases(coordinator, { holder: `pid ${process.pid}` });
 * await leases.withLease(() => db`select 1`);
 */
export class PostgresCoordinator implements Coordinator {
  readonly pool: string;
  readonly #sql: Sql;
  readonly #config: PoolConfig;
  readonly #durable: boolean;
  readonly #channel: string;
  readonly #pending = new Map<string, Pending>();
  #ready: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  /** Backend pid of our LISTEN connection, stamped on our waiter rows as proof of life. */
  #ownerPid: number | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  /** The pool's earliest lease expiry as of our last transition: when a dead holder's slot returns. */
  #nextExpiry: number | null = null;
  #closed = false;
  #batch: Call[] = [];
  #conn: ReservedSql | undefined;
  #flushing = false;

  constructor(options: PostgresCoordinatorOptions) {
    if (typeof options !== "object" || options === null || typeof options.sql !== "function") {
      throw new LeaseError("INVALID_ARGUMENT", expected("options.sql", "a postgres.js client", options?.sql));
    }
    // One connection stays reserved for transitions; stats() and setup need another.
    const max = (options.sql as { options?: { max?: number } }).options?.max;
    if (typeof max === "number" && max < 2) {
      throw new LeaseError("INVALID_ARGUMENT", expected("options.sql", "a postgres.js client with `max` of at least 2", `max: ${max}`));
    }
    const pool = options.pool ?? "main";
    if (typeof pool !== "string" || !POOL_NAME.test(pool)) {
      throw new LeaseError("INVALID_ARGUMENT", expected("pool", "1 to 48 characters of A-Z a-z 0-9 _ . : -", pool));
    }
    this.pool = pool;
    this.#sql = options.sql;
    this.#config = validateConfig(options.config);
    this.#durable = options.durableCommits === true;
    this.#channel = `leasegate.${pool}`;
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
    const sql = this.#sql;
    const [current] = await sql`
      SELECT 1 FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = ${SCHEMA_SENTINEL.table} AND column_name = ${SCHEMA_SENTINEL.column}`;
    for (let attempt = 1; !current; attempt++) {
      try {
        await sql.begin(async (tx) => {
          await tx`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`;
          await tx.unsafe(SCHEMA);
        });
        break;
      } catch (error) {
        // An upgrade racing a running transition of another process: the DDL lost; run it again.
        if ((error as { code?: unknown }).code !== "40P01" || attempt >= 3) throw error;
      }
    }
    const empty = createPool(this.#config);
    await sql`
      INSERT INTO leasegate_pools (pool, config, counters, waits)
      VALUES (${this.pool}, ${sql.json(asJson(this.#config))}, ${sql.json(asJson(empty.counters))},
              ${sql.json(asJson(empty.waits))})
      ON CONFLICT (pool) DO UPDATE SET config = excluded.config`;
    // Listening starts before any waiter of ours is queued, so no grant can be missed.
    let first = true;
    const sub = await sql.listen(
      this.#channel,
      (payload) => this.#onNotify(payload),
      () => {
        // Called again after postgres.js re-listens on a new connection: adopt its pid.
        if (first) first = false;
        else void this.#adoptListener().catch(() => {});
      },
    );
    this.#ownerPid = sub.state.pid;
    this.#unlisten = sub.unlisten;
  }

  /** After a LISTEN reconnect: stamp our queued waiters with the new connection's pid. */
  async #adoptListener(): Promise<void> {
    const probe = await this.#sql.listen(this.#channel, () => {});
    await probe.unlisten();
    this.#ownerPid = probe.state.pid;
    const ids = [...this.#pending.keys()];
    if (ids.length > 0) {
      await this.#sql`UPDATE leasegate_waiters SET owner_pid = ${this.#ownerPid} WHERE pool = ${this.pool} AND id = ANY(${ids})`;
    }
  }

  /**
   * Asks for a slot: a lease at once, `QUEUE_FULL`, or a wait in global FIFO order until a slot
   * frees (a lease) or the deadline passes (`ACQUIRE_TIMEOUT`).
   *
   * @example
   * const r = await coordinator.acquire({ holder: "worker-1", waitMs: 2000 });
   */
  async acquire(options: AcquireOptions = {}): Promise<AcquireResult> {
    if (typeof options !== "object" || options === null) {
      return { ok: false, code: "INVALID_ARGUMENT", message: expected("options", "an object", options) };
    }
    if (this.#closed) {
      return { ok: false, code: "COORDINATOR_UNAVAILABLE", message: "The coordinator was closed", retryAfterMs: 100 };
    }
    await this.ready();
    const leaseId = crypto.randomUUID();
    const holder = options.holder ?? "";
    // Registered before the transaction: a grant by another process can be announced before our
    // own commit's answer reaches us.
    let resolve!: (result: AcquireResult) => void;
    const answer = new Promise<AcquireResult>((r) => (resolve = r));
    const pending: Pending = { holder, enqueuedAt: Date.now(), deadline: Infinity, resolve, settled: false };
    this.#pending.set(leaseId, pending);
    try {
      const outcome = await this.#transition((state, now) => {
        const { waitMs, ttlMs, priority, tenant } = options;
        const { outcome, effects } = acquire(state, { leaseId, holder, waitMs, ttlMs, priority, tenant }, now);
        return { answer: outcome, effects };
      });
      if (outcome.status === "granted") this.#settle(leaseId, { ok: true, lease: grantOf(outcome.lease) });
      else if (outcome.status === "rejected") {
        this.#settle(leaseId, { ok: false, code: outcome.code, message: outcome.message, retryAfterMs: outcome.retryAfterMs });
      } else if (outcome.status === "queued") {
        pending.deadline = outcome.deadline;
        this.#schedule();
      }
    } catch (error) {
      this.#pending.delete(leaseId);
      if (isLeaseError(error)) return { ok: false, code: error.code, message: error.message };
      throw error;
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
    return this.#call((state, now) => {
      const { outcome, effects } = release(state, ref, now);
      return { answer: outcome.status === "ok" ? { ok: true, released: true } : leaseFailure(outcome), effects };
    });
  }

  /**
   * Extends a live lease to now + `ttlMs` (default: the pool's TTL).
   *
   * @example
   * const r = await coordinator.renew({ leaseId: lease.id, fence: lease.fence }, 30_000);
   */
  renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult> {
    return this.#call((state, now) => {
      const { outcome, effects } = renew(state, ref, now, ttlMs);
      return { answer: outcome.status === "ok" ? { ok: true, lease: grantOf(outcome.lease) } : leaseFailure(outcome), effects };
    });
  }

  /** One transition whose answer is a result object: a LeaseError becomes its failure. */
  async #call<T>(step: StepFn<T>): Promise<T | Failure> {
    await this.ready();
    try {
      return await this.#transition(step);
    } catch (error) {
      if (isLeaseError(error)) return { ok: false, code: error.code, message: error.message };
      throw error;
    }
  }

  /**
   * The pool's live state across all processes (a read: nothing is reaped by looking).
   *
   * @example
   * const { held, waiting, counters } = await coordinator.stats();
   */
  async stats(): Promise<PoolStats> {
    return stats((await this.#snapshot()).state, Date.now());
  }

  async #snapshot(): Promise<Loaded> {
    await this.ready();
    return await this.#sql.begin((tx) => this.#load(tx));
  }

  // ── Operator controls: each is one transition, persisted in the pool's row for every process. ──

  /** One control transition; answers the pool's settings after it. */
  #control(step: (state: PoolState, now: number, loaded: Loaded) => Effects): Promise<ControlResult> {
    return this.#call((state, now, loaded) => {
      const effects = step(state, now, loaded);
      const answer = { ok: true, paused: state.paused === true, limit: state.config.limit, limitOverride: loaded.limitOverride } as const;
      return { answer, effects };
    });
  }

  /**
   * Stops granting in every process sharing the pool (drain, say before a migration): held leases
   * run on, callers queue and time out at their deadlines. Kept until `resume()`.
   *
   * @example
   * await coordinator.pause(); // wait until (await coordinator.stats()).held === 0, migrate, resume
   */
  pause(): Promise<ControlResult> {
    return this.#control((state, now) => setPaused(state, true, now));
  }

  /**
   * Grants again; queued callers get free slots at once, in order.
   *
   * @example
   * await coordinator.resume();
   */
  resume(): Promise<ControlResult> {
    return this.#control((state, now) => setPaused(state, false, now));
  }

  /**
   * Changes the pool's limit for every process and keeps it (also across restarts); `null` returns
   * to the configured one. Raising it grants queued callers at once; lowering it revokes nothing.
   *
   * @example
   * await coordinator.setLimit(20); await coordinator.setLimit(null);
   */
  setLimit(limit: number | null): Promise<ControlResult> {
    return this.#control((state, now, loaded) => {
      const target = limit === null ? loaded.baseLimit : checkInt("limit", limit, 1, BOUNDS.limit);
      const effects = reconfigure(state, { ...state.config, limit: target }, now);
      loaded.limitOverride = limit === null ? null : state.config.limit;
      return effects;
    });
  }

  /**
   * Frees a stuck lease by its id or an unambiguous prefix of at least 8 characters (stats show
   * the first 8). The holder's later release or renewal fails with `LEASE_NOT_FOUND`.
   *
   * @example
   * await coordinator.revoke("3f2a9c1b");
   */
  revoke(idOrPrefix: string): Promise<RevokeResult> {
    return this.#call((state, now) => {
      const lease = findByPrefix(state, idOrPrefix);
      // An already-expired lease is reaped by the same transition: the slot is free either way.
      const { effects } = release(state, { leaseId: lease.id, fence: lease.fence }, now);
      return { answer: { ok: true, released: true, idPrefix: lease.id.slice(0, 8), holder: lease.holder } as const, effects };
    });
  }

  /**
   * Reads `pg_stat_activity` (connections of this client's role, and those named `applicationName`)
   * and compares it with the leases held now; the result is kept in the pool's row for
   * `operatorStats()` in any process.
   *
   * @example
   * const r = await coordinator.reconcile("my-app"); // r.drift, r.overLimit, r.status
   */
  async reconcile(applicationName: string): Promise<Reconciliation> {
    await this.ready();
    const counts = await countConnections(this.#sql, applicationName);
    const { held, limit } = await this.stats();
    const result = compareConnections({ held, limit }, counts, Date.now());
    await this.#sql`UPDATE leasegate_pools SET reconciliation = ${this.#sql.json(asJson(result))} WHERE pool = ${this.pool}`;
    return result;
  }

  /**
   * `stats()` plus what only operators need: the limit override and the last reconciliation.
   *
   * @example
   * const { paused, limitOverride, reconciliation } = await coordinator.operatorStats();
   */
  async operatorStats(): Promise<OperatorStats> {
    const { state, limitOverride, reconciliation } = await this.#snapshot();
    return { ...stats(state, Date.now()), limitOverride, reconciliation };
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
    clearTimeout(this.#timer);
    const ids = [...this.#pending.keys()];
    for (const id of ids) {
      this.#settle(id, { ok: false, code: "COORDINATOR_UNAVAILABLE", message: "The coordinator was closed", retryAfterMs: 100 });
    }
    if (ids.length > 0 && this.#ready) {
      try {
        await this.#transition((state, now) => {
          const effects: Effects = { granted: [], timedOut: [], expired: [] };
          for (const id of ids) {
            // Granted just now, before its caller could hear of it: give the slot straight back.
            const lease = state.leases.get(id);
            const fx = lease ? release(state, { leaseId: id, fence: lease.fence }, now).effects : cancel(state, id, now).effects;
            effects.granted.push(...fx.granted);
            effects.timedOut.push(...fx.timedOut);
            effects.expired.push(...fx.expired);
          }
          return { answer: null, effects };
        });
      } catch {
        // The rows time out at their deadlines (and expire at their TTL) on their own.
      }
    }
    await this.#unlisten?.().catch(() => {});
    this.#conn?.release();
    this.#conn = undefined;
  }

  /**
   * Loads the pool under its advisory lock, which the open transaction holds until it ends. With
   * `begin`, the BEGIN goes in the same round trip (on a reserved connection).
   */
  async #load(tx: Sql | TransactionSql, begin = false): Promise<Loaded> {
    // One round trip: postgres.js pipelines queries issued together on one connection. The read
    // is its own statement after the lock's, so its snapshot sees every earlier transition.
    const [, , [pool]] = await Promise.all([
      begin ? tx`BEGIN` : tx`SELECT 1`,
      tx`SELECT pg_advisory_xact_lock(hashtext(${this.pool}))`,
      tx`
        SELECT p.next_fence, p.config, p.counters, p.waits, p.hold_ms_sum, p.hold_count, p.paused, p.limit_override,
          p.adaptive, p.last_served, p.serve_seq, p.reconciliation,
          (SELECT coalesce(json_agg(json_build_array(id, fence, holder, granted_at, expires_at, priority)), '[]')
             FROM leasegate_leases WHERE pool = p.pool)::text AS leases,
          (SELECT coalesce(json_agg(json_build_array(id, holder, enqueued_at, deadline, ttl_ms,
                     owner_pid IS NULL OR owner_pid = ANY(ARRAY(SELECT pid FROM pg_stat_activity)), priority, tenant) ORDER BY seq), '[]')
             FROM leasegate_waiters WHERE pool = p.pool)::text AS waiters
        FROM leasegate_pools p WHERE p.pool = ${this.pool}`,
    ]);
    if (!pool) throw new LeaseError("INTERNAL", `Pool ${this.pool} has no row: was the database reset under a running coordinator?`);
    const leases = (JSON.parse(pool.leases as string) as Array<[string, number, string, number, number, Priority | null]>).map(
      ([id, fence, holder, grantedAt, expiresAt, priority]): Lease =>
        priority === null ? { id, fence, holder, grantedAt, expiresAt } : { id, fence, holder, grantedAt, expiresAt, priority },
    );
    const base = pool.config as PoolConfig;
    const limitOverride = pool.limit_override === null ? null : Number(pool.limit_override);
    const config = limitOverride === null ? base : { ...base, limit: limitOverride };
    const state = createPool(config, { leases, nextFence: Number(pool.next_fence) });
    type WaiterRow = [string, string, number, number, number, boolean, Priority | null, string | null];
    const waiterRows = JSON.parse(pool.waiters as string) as WaiterRow[];
    state.queue = waiterRows.map(([leaseId, holder, enqueuedAt, deadline, ttlMs, , priority, tenant]): Waiter => {
      const w: { -readonly [K in keyof Waiter]: Waiter[K] } = { leaseId, holder, enqueuedAt, deadline, ttlMs };
      if (priority !== null) w.priority = priority;
      if (tenant !== null) w.tenant = tenant;
      return w;
    });
    state.scheduled = state.queue.filter(isScheduled).length;
    state.paused = pool.paused === true;
    // A pool whose config turned adaptive on starts from createPool's fresh state; off drops it.
    if (state.adaptive && pool.adaptive !== null) state.adaptive = pool.adaptive as AdaptiveState;
    state.lastServed = new Map(pool.last_served as Array<[string, number]>);
    state.serveSeq = Number(pool.serve_seq);
    state.counters = pool.counters as Counters;
    const waits = pool.waits as Histogram;
    state.waits = { ...state.waits, counts: waits.counts, count: waits.count, sum: waits.sum, max: waits.max };
    state.holdMsSum = Number(pool.hold_ms_sum);
    state.holdCount = Number(pool.hold_count);
    return {
      state,
      limitOverride,
      baseLimit: base.limit,
      reconciliation: (pool.reconciliation as Reconciliation | null) ?? null,
      serveSeqBefore: state.serveSeq,
      leasesBefore: new Map(leases.map((l) => [l.id, l.expiresAt])),
      queueBefore: new Set(state.queue.map((w) => w.leaseId)),
      dead: waiterRows.filter((r) => !r[5]).map((r) => r[0]),
    };
  }

  /**
   * Runs `step` (a core call) in the next transition. Calls made while a transition is in flight
   * are coalesced into the following one, in call order — like a group commit: one lock, one load
   * and one write per batch, so throughput grows with load instead of collapsing under it.
   */
  #transition<T>(step: StepFn<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#batch.push({ step, resolve: resolve as (answer: unknown) => void, reject });
      if (!this.#flushing) void this.#flush();
    });
  }

  async #flush(): Promise<void> {
    this.#flushing = true;
    while (this.#batch.length > 0) {
      // The batch is cut once the lock is ours: calls made while we waited for it join this one.
      let batch: Call[] | undefined;
      const take = () => (batch = this.#batch.splice(0, MAX_BATCH));
      try {
        await this.#run(take);
      } catch (error) {
        for (const call of batch ?? take()) call.reject(error);
      }
    }
    this.#flushing = false;
  }

  /**
   * One transition: lock, load, run each call's step on the same state (a LeaseError fails that
   * call alone: the core validates before it mutates), write the difference and the notices,
   * commit; then answer the calls and this process's waiters the transition settled.
   */
  async #run(take: () => Call[]): Promise<void> {
    let batch: Call[] = [];
    // One reserved connection per process runs the transitions: batches are sequential anyway, and
    // managing BEGIN/COMMIT ourselves lets the writes and the COMMIT share one round trip, so the
    // pool's lock is held for about one round trip per batch.
    if (!this.#conn) {
      const conn = await this.#sql.reserve();
      // See `durableCommits`: set once for this connection instead of in every transaction.
      if (!this.#durable) await conn`SET synchronous_commit = off`;
      this.#conn = conn;
    }
    const tx = this.#conn;
    const transaction = async () => {
      const loaded = await this.#load(tx, true);
      batch = take();
      const { state } = loaded;
      const effects: Effects = { granted: [], timedOut: [], expired: [] };
      const answers: Array<{ ok: true; answer: unknown } | { ok: false; error: unknown }> = [];
      // A dead process's waiters are withdrawn (the core's `cancel`) before anyone is granted, so a
      // freed slot never goes to a caller that no longer exists.
      if (loaded.dead.length > 0) {
        const fx = withdraw(state, loaded.dead, Date.now()).effects;
        effects.granted.push(...fx.granted);
        effects.timedOut.push(...fx.timedOut);
        effects.expired.push(...fx.expired);
      }
      for (const call of batch) {
        try {
          const { answer, effects: fx } = call.step(state, Date.now(), loaded);
          effects.granted.push(...fx.granted);
          effects.timedOut.push(...fx.timedOut);
          effects.expired.push(...fx.expired);
          answers.push({ ok: true, answer });
        } catch (error) {
          if (!isLeaseError(error)) throw error;
          answers.push({ ok: false, error });
        }
      }
      await Promise.all([...this.#writes(tx, loaded, effects), tx`COMMIT`]);
      return { answers, effects, state };
    };
    let done: Awaited<ReturnType<typeof transaction>>;
    try {
      done = await transaction();
    } catch (error) {
      try {
        await tx`ROLLBACK`;
      } catch {
        // A broken connection: the server rolled back when it dropped; take a fresh one next time.
        tx.release();
        this.#conn = undefined;
      }
      throw error;
    }
    done.answers.forEach((a, i) => (a.ok ? batch[i]!.resolve(a.answer) : batch[i]!.reject(a.error)));
    this.#after(done.state, done.effects);
  }

  /** The statements that bring the tables in line with `state`; sent together (pipelined). */
  #writes(tx: Sql, loaded: Loaded, effects: Effects): Promise<unknown>[] {
    const { state, leasesBefore, queueBefore } = loaded;
    const gone = [...leasesBefore.keys()].filter((id) => !state.leases.has(id));
    const added: unknown[] = [];
    const renewed: unknown[] = [];
    for (const l of state.leases.values()) {
      const before = leasesBefore.get(l.id);
      if (before === undefined) added.push([l.id, l.fence, l.holder, l.grantedAt, l.expiresAt, l.priority ?? null]);
      else if (before !== l.expiresAt) renewed.push([l.id, l.expiresAt]);
    }
    const queued = new Set(state.queue.map((w) => w.leaseId));
    const left = [...queueBefore].filter((id) => !queued.has(id));
    // New waiters in queue order: their sequence numbers are drawn in this order, under the lock.
    const joined = state.queue
      .filter((w) => !queueBefore.has(w.leaseId))
      .map((w) => [w.leaseId, w.holder, w.enqueuedAt, w.deadline, w.ttlMs, this.#ownerPid, w.priority ?? null, w.tenant ?? null]);
    // Waiters settled here may belong to any process: announce them; delivered on commit only.
    const lines = [
      ...effects.granted.map((l) => `g ${l.id} ${l.fence} ${l.grantedAt} ${l.expiresAt}`),
      ...effects.timedOut.map((w) => `t ${w.leaseId} ${w.deadline - w.enqueuedAt} ${retryAfterHint(state)}`),
    ];
    const notices: string[] = [];
    for (let i = 0; i < lines.length; i += NOTIFY_BATCH) notices.push(lines.slice(i, i + NOTIFY_BATCH).join("\n"));
    const waits = { counts: state.waits.counts, count: state.waits.count, sum: state.waits.sum, max: state.waits.max };
    const turns = state.serveSeq === loaded.serveSeqBefore ? null : JSON.stringify([...state.lastServed]);
    // The whole difference is one statement: few messages and one executor start under the lock.
    return [
      tx`
      WITH
        del_leases AS (
          DELETE FROM leasegate_leases WHERE pool = ${this.pool}
            AND id IN (SELECT json_array_elements_text(${JSON.stringify(gone)}::text::json))),
        add_leases AS (
          INSERT INTO leasegate_leases (pool, id, fence, holder, granted_at, expires_at, priority)
          SELECT ${this.pool}, e->>0, (e->>1)::bigint, e->>2, (e->>3)::bigint, (e->>4)::bigint, e->>5
          FROM json_array_elements(${JSON.stringify(added)}::text::json) e),
        renew_leases AS (
          UPDATE leasegate_leases l SET expires_at = (e->>1)::bigint
          FROM json_array_elements(${JSON.stringify(renewed)}::text::json) e
          WHERE l.pool = ${this.pool} AND l.id = e->>0),
        del_waiters AS (
          DELETE FROM leasegate_waiters WHERE pool = ${this.pool}
            AND id IN (SELECT json_array_elements_text(${JSON.stringify(left)}::text::json))),
        add_waiters AS (
          INSERT INTO leasegate_waiters (pool, id, holder, enqueued_at, deadline, ttl_ms, owner_pid, priority, tenant)
          SELECT ${this.pool}, e->>0, e->>1, (e->>2)::bigint, (e->>3)::bigint, (e->>4)::bigint, (e->>5)::integer, e->>6, e->>7
          FROM json_array_elements(${JSON.stringify(joined)}::text::json) WITH ORDINALITY AS j(e, n) ORDER BY n),
        pool_row AS (
          UPDATE leasegate_pools SET next_fence = ${state.nextFence}, counters = ${JSON.stringify(state.counters)}::text::jsonb,
            waits = ${JSON.stringify(waits)}::text::jsonb, hold_ms_sum = ${state.holdMsSum}, hold_count = ${state.holdCount},
            paused = ${state.paused === true}, limit_override = ${loaded.limitOverride},
            adaptive = ${JSON.stringify(state.adaptive ?? null)}::text::jsonb,
            last_served = coalesce(${turns}::text::jsonb, last_served), serve_seq = ${state.serveSeq}
          WHERE pool = ${this.pool})
      SELECT pg_notify(${this.#channel}, n) FROM json_array_elements_text(${JSON.stringify(notices)}::text::json) n`,
    ];
  }

  /** After a commit: answer our waiters it settled (the NOTIFY may come later or never), re-arm. */
  #after(state: PoolState, effects: Effects): void {
    this.#nextExpiry = nextExpiryAt(state);
    for (const l of effects.granted) this.#settle(l.id, { ok: true, lease: grantOf(l) });
    for (const w of effects.timedOut) {
      this.#settle(w.leaseId, timeoutResult(w.deadline - w.enqueuedAt, state.config.limit, retryAfterHint(state)));
    }
    // Our waiters that another process settled and whose notice we have not seen yet: the state
    // we just read is the truth (a lease under their id, or gone = timed out).
    if (this.#pending.size > 0) {
      const queued = new Set(state.queue.map((w) => w.leaseId));
      for (const [id, p] of this.#pending) {
        if (p.deadline === Infinity || queued.has(id)) continue;
        const lease = state.leases.get(id);
        if (lease) this.#settle(id, { ok: true, lease: grantOf(lease) });
        else this.#settle(id, timeoutResult(p.deadline - p.enqueuedAt, state.config.limit, retryAfterHint(state)));
      }
    }
    this.#schedule();
  }

  #onNotify(payload: string): void {
    for (const line of payload.split("\n")) {
      const [kind, id, a, b, c] = line.split(" ");
      if (!id) continue;
      const p = this.#pending.get(id);
      if (!p) continue;
      if (kind === "g") {
        const lease = { id, fence: Number(a), holder: p.holder, grantedAt: Number(b), expiresAt: Number(c) };
        this.#settle(id, { ok: true, lease });
      } else if (kind === "t") {
        this.#settle(id, timeoutResult(Number(a), this.#config.limit, Number(b)));
      }
    }
    this.#schedule();
  }

  #settle(id: string, result: AcquireResult): void {
    const p = this.#pending.get(id);
    if (!p || p.settled) return;
    p.settled = true;
    this.#pending.delete(id);
    p.resolve(result);
  }

  /**
   * One timer while this process has waiters: at the earliest of their deadlines and the pool's
   * next lease expiry (a dead holder's slot frees only by time). Grants themselves arrive by NOTIFY.
   */
  #schedule(): void {
    let at = Infinity;
    for (const p of this.#pending.values()) if (p.deadline < at) at = p.deadline;
    if (at !== Infinity && this.#nextExpiry !== null && this.#nextExpiry < at) at = this.#nextExpiry;
    if (at === Infinity || this.#closed) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#timerAt = Infinity;
      return;
    }
    if (this.#timer !== undefined && this.#timerAt <= at) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#onTimer(), Math.max(0, at - Date.now()));
  }

  #onTimer(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    // A timer set for a lease expiry that was since renewed or released is harmless: the tick
    // finds nothing to reap and re-arms from the fresh state.
    this.#nextExpiry = null;
    this.#transition((state, now) => ({ answer: null, effects: tick(state, now) })).catch(() => {
      // The database is unreachable: try again shortly; our waiters still time out at deadlines.
      if (this.#closed) return;
      clearTimeout(this.#timer);
      this.#timerAt = Date.now() + 200;
      this.#timer = setTimeout(() => this.#onTimer(), 200);
    });
  }
}
