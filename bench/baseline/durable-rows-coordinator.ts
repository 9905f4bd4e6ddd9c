/**
 * The coordinator as it was before leases moved to memory (bench-only "before", measured in the
 * same run as today's): every grant and renewal answered only after its lease row is durable
 * (group commit of rows), a durable alarm at the next expiry. Not part of the package.
 */
import { DurableObject } from "cloudflare:workers";
import {
  type AcquireManyResult,
  type AcquireOptions,
  type AcquireResult,
  type ConnectionCounts,
  type ControlResult,
  type Lease,
  type LeaseRef,
  type OperatorStats,
  type PoolEnv,
  type PoolState,
  type PoolStats,
  type Reconciliation,
  type ReleaseManyResult,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  LeaseError,
  checkBatch,
  checkInt,
  compareConnections,
  configFromEnv,
  isLeaseError,
  nextExpiryAt,
  restore,
  snapshot,
  stats,
  tick,
} from "../../src/core/index.ts";
import {
  type Step,
  type StepFn,
  GroupCommit,
  WakeTimer,
  Waiters,
  failureOf,
  guarded,
  settlementsOf,
  steps,
} from "../../src/engine/index.ts";
import { CoordinatorStore } from "./durable-rows-storage.ts";

/** The variables the coordinator reads; the same names as everywhere else in leasegate. */
interface CoordinatorEnv extends PoolEnv {}

/** A transition waiting for its rows to be written. */
interface Flush {
  resolve(): void;
  reject(error: unknown): void;
}

/**
 * The global admission controller for one pool (one object per pool name: `idFromName(pool)`).
 *
 * Decisions are made by `src/core/` and the shared engine (`src/engine/`); this class keeps the
 * pool in the object's SQLite storage (lease rows and one snapshot of counters, histogram, paused
 * flag and limit override), turns deadlines into a timer and expiries into an alarm, and parks
 * waiters as pending RPC promises that are resolved the moment a slot frees — nobody polls.
 *
 * @example
 * const stub = env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName("main"));
 * const result = await stub.acquire({ holder: "req-1", waitMs: 2000 });
 */
export class DurableRowsCoordinator extends DurableObject<CoordinatorEnv> {
  private pool: PoolState | undefined;
  private configError: LeaseError | undefined;
  private readonly store: CoordinatorStore;
  private readonly waiters = new Waiters();
  private readonly timer = new WakeTimer(() => this.onTimer());
  /** The alarm time we last stored; the alarm only has to be early enough, never exact. */
  private alarmAt: number | null = null;
  /** Lease rows to write at the next flush, by id: the lease to upsert, or null to delete. */
  private readonly staged = new Map<string, Lease | null>();
  private readonly commits = new GroupCommit<Flush>((take) => this.flush(take));
  /** Resolves when the last flushed batch is durable. */
  private committing: Promise<void> = Promise.resolve();

  constructor(ctx: DurableObjectState, env: CoordinatorEnv) {
    super(ctx, env);
    this.store = new CoordinatorStore(ctx.storage);
    void ctx.blockConcurrencyWhile(async () => {
      this.load();
    });
  }

  private load(): void {
    const { leases, snapshot: snap } = this.store.load();
    try {
      this.pool = restore(this.baseConfig(), snap, leases);
    } catch (error) {
      this.configError = isLeaseError(error) ? error : new LeaseError("INVALID_CONFIG", String(error));
      return;
    }
    // Leases that expired while the object was gone are reaped now; live ones are honored.
    void this.afterStep({ answer: null, effects: tick(this.pool, Date.now()) });
  }

  /** LEASE_* from env. */
  private baseConfig() {
    return configFromEnv(this.env);
  }

  private requirePool(): PoolState {
    if (!this.pool) throw this.configError ?? new LeaseError("INTERNAL", "Coordinator not loaded");
    return this.pool;
  }

  /** Runs one step on the pool now and stages what it changed; see `afterStep`. */
  private run<T>(step: StepFn<T>): { step: Step<T>; written: Promise<void> } {
    const done = step(this.requirePool(), Date.now());
    return { step: done, written: this.afterStep(done) };
  }

  /**
   * Stages the rows a step changed, answers the waiters it settled and re-arms the timer. Resolves
   * once the batch holding these writes is issued: workerd's output gate then holds every answer
   * until it is durable. Grants are answered only then; a timed-out waiter at once. A release's
   * answer need not wait for its delete: a lost delete only makes a restarted object count the
   * lease as held until its TTL — fewer connections than the limit for a while, never more.
   */
  private afterStep(step: Step<unknown>): Promise<void> {
    const pool = this.requirePool();
    const fx = step.effects;
    for (const l of step.written ?? []) this.staged.set(l.id, l);
    for (const id of step.removed ?? []) this.staged.set(id, null);
    for (const l of fx.granted) this.staged.set(l.id, l);
    for (const l of fx.expired) this.staged.set(l.id, null);
    const settled = settlementsOf(pool, fx);
    const written = new Promise<void>((resolve, reject) => this.commits.add({ resolve, reject }));
    // A release does not wait for its write; a failed write must not become an unhandled rejection.
    written.catch(() => {});
    this.waiters.settleAll(settled.filter(([, r]) => !r.ok));
    const granted = settled.filter(([, r]) => r.ok);
    if (granted.length > 0) {
      // A grant whose row could not be written is never answered as one: the waiter hears the
      // failure (the slot comes back at the lease's short TTL, as nobody renews it).
      written.then(
        () => this.waiters.settleAll(granted),
        (error: unknown) => this.waiters.settleAll(granted.map(([id]) => [id, failureOf(error)] as const)),
      );
    }
    this.schedule(pool);
    return written;
  }

  /**
   * One batch of the group commit: it starts once the previous batch is durable, so every call
   * that arrives during a commit joins the next one. With nothing in flight it flushes at the end
   * of this task (no timer: a timer turn costs milliseconds in workerd under load). A crash before
   * the flush loses only calls whose answers were never sent.
   */
  private async flush(take: () => Flush[]): Promise<void> {
    await this.committing;
    const batch = take();
    this.store.write(this.staged, snapshot(this.requirePool()));
    this.staged.clear();
    this.committing = this.store.sync().catch(() => {});
    for (const f of batch) f.resolve();
  }

  /**
   * The wake timer for the next deadline or expiry (precise while the object lives), and a durable
   * alarm for the next expiry, so a dead holder's slot comes back even if the object was evicted.
   */
  private schedule(pool: PoolState): void {
    this.timer.arm(this.waiters.wakeAt(pool));
    const expiryAt = nextExpiryAt(pool);
    if (expiryAt !== null && (this.alarmAt === null || expiryAt < this.alarmAt)) {
      this.alarmAt = expiryAt;
      void this.ctx.storage.setAlarm(expiryAt);
    }
  }

  private onTimer(): void {
    if (this.pool) void this.afterStep({ answer: null, effects: tick(this.pool, Date.now()) });
  }

  /** Reaps expired leases; re-arms itself while leases are held. */
  override async alarm(): Promise<void> {
    this.alarmAt = null;
    if (!this.pool) return;
    await this.afterStep({ answer: null, effects: tick(this.pool, Date.now()) });
  }

  /**
   * Asks for a slot. Answers at once with a lease or `QUEUE_FULL`, or waits in FIFO order until a
   * slot frees (a lease) or the deadline passes (`ACQUIRE_TIMEOUT`).
   *
   * @example
   * const r = await stub.acquire({ holder: "req-1", waitMs: 2000 });
   * if (r.ok) use(r.lease); else console.log(r.code, r.retryAfterMs);
   */
  async acquire(options: AcquireOptions = {}): Promise<AcquireResult> {
    try {
      return (await this.acquireOne(options, true))!;
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Several acquires in one call (a client's concurrent callers, coalesced). Each request is
   * granted now if a slot is free for it, in order, all under one commit; a request that would wait
   * answers `null` and is not queued: the client sends it on its own. A bad request fails alone.
   *
   * @example
   * const r = await stub.acquireMany([{ holder: "a" }, { holder: "b" }]);
   * if (r.ok) for (const x of r.results) if (x === null) await stub.acquire({ holder: "b" });
   */
  async acquireMany(requests: AcquireOptions[]): Promise<AcquireManyResult> {
    try {
      // Decided in order, synchronously (each call runs to its first await); answered together.
      const answers = checkBatch("requests", requests).map((options) =>
        this.acquireOne(options, false).catch(failureOf),
      );
      return { ok: true, results: await Promise.all(answers) };
    } catch (error) {
      return failureOf(error);
    }
  }

  /** One acquire; with `queue` false, `null` instead of waiting or being shed. */
  private async acquireOne(options: AcquireOptions, queue: boolean): Promise<AcquireResult | null> {
    const pool = this.requirePool();
    const leaseId = crypto.randomUUID();
    const { step, written } = this.run(steps.acquire(leaseId, options, queue));
    const answer = step.answer;
    if (answer.kind === "deferred") return null;
    if (answer.kind === "result") {
      if (answer.result.ok) await written;
      return answer.result;
    }
    const waiting = this.waiters.park(leaseId, options.holder ?? "", Date.now());
    this.waiters.queued(leaseId, answer.deadline);
    this.schedule(pool);
    return await waiting;
  }

  /**
   * Gives a slot back. Unknown ids and stale fences fail with a code and change nothing.
   *
   * @example
   * await stub.release({ leaseId: lease.id, fence: lease.fence });
   */
  async release(ref: LeaseRef): Promise<ReleaseResult> {
    return this.releaseOne(ref);
  }

  /**
   * Several releases in one call, in order; each answers as `release` would.
   *
   * @example
   * const r = await stub.releaseMany([{ leaseId: a.id, fence: a.fence }, { leaseId: b.id, fence: b.fence }]);
   */
  async releaseMany(refs: LeaseRef[]): Promise<ReleaseManyResult> {
    try {
      return { ok: true, results: checkBatch("refs", refs).map((ref) => this.releaseOne(ref)) };
    } catch (error) {
      return failureOf(error);
    }
  }

  private releaseOne(ref: LeaseRef): ReleaseResult {
    try {
      // Not awaited: see afterStep for why a release may answer before its delete is written.
      return this.run(guarded(steps.release(ref))).step.answer;
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Extends a live lease by `ttlMs` (default: the pool's TTL) from now.
   *
   * @example
   * const r = await stub.renew({ leaseId: lease.id, fence: lease.fence });
   */
  async renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult> {
    return this.durable(guarded(steps.renew(ref, ttlMs)));
  }

  /** Runs a step and answers once what it changed is written (renewals and operator controls). */
  private async durable<T>(step: StepFn<T>): Promise<T> {
    try {
      const { step: done, written } = this.run(step);
      await written;
      return done.answer;
    } catch (error) {
      return failureOf(error) as T;
    }
  }

  /**
   * A snapshot for operators: limit, held, waiting, counters, wait percentiles, held leases.
   *
   * @example
   * const { held, limit } = await stub.stats();
   */
  async stats(): Promise<PoolStats> {
    return stats(this.requirePool(), Date.now());
  }

  // ── Operator controls. Each is one transition, persisted before it answers. ──

  /**
   * Stops granting (drain, say before a migration): held leases run on, callers queue and time out
   * at their deadlines. Persisted: a restarted object stays paused.
   *
   * @example
   * await stub.pause(); // wait until (await stub.stats()).held === 0, migrate, then stub.resume()
   */
  async pause(): Promise<ControlResult> {
    return this.durable(guarded(steps.pause(true)));
  }

  /**
   * Grants again; queued callers get free slots at once, in order.
   *
   * @example
   * await stub.resume();
   */
  async resume(): Promise<ControlResult> {
    return this.durable(guarded(steps.pause(false)));
  }

  /**
   * Changes the limit without a restart and keeps it across restarts; `null` returns to the
   * default from `LEASE_LIMIT`. Raising it grants queued callers at once; lowering it revokes
   * nothing (no one is granted until held falls below the new limit).
   *
   * @example
   * await stub.setLimit(20); await stub.setLimit(null);
   */
  async setLimit(limit: number | null): Promise<ControlResult> {
    try {
      return await this.durable(guarded(steps.setLimit(limit, this.baseConfig().limit)));
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Frees a stuck lease by its id or an unambiguous prefix of at least 8 characters (stats show
   * the first 8). The holder's later release or renewal fails with `LEASE_NOT_FOUND`.
   *
   * @example
   * await stub.revoke("3f2a9c1b");
   */
  async revoke(idOrPrefix: string): Promise<RevokeResult> {
    return this.durable(guarded(steps.revoke(idOrPrefix)));
  }

  /**
   * Compares counts the caller read from `pg_stat_activity` with the leases held right now, and
   * keeps the result (across restarts) for `operatorStats()`.
   *
   * @example
   * const r = await stub.reconcile(await countConnections(sql, "my-app"));
   */
  async reconcile(counts: ConnectionCounts): Promise<Reconciliation> {
    const pool = this.requirePool();
    checkInt("roleConnections", counts.roleConnections, 0, Number.MAX_SAFE_INTEGER);
    checkInt("appConnections", counts.appConnections, 0, Number.MAX_SAFE_INTEGER);
    const result = compareConnections({ held: pool.leases.size, limit: pool.config.limit }, counts, Date.now());
    this.store.writeMeta("reconciliation", JSON.stringify(result));
    return result;
  }

  /**
   * `stats()` plus what only operators need: the limit override and the last reconciliation.
   *
   * @example
   * const { paused, reconciliation } = await stub.operatorStats();
   */
  async operatorStats(): Promise<OperatorStats> {
    const pool = this.requirePool();
    const reconciliation = this.store.readMeta("reconciliation");
    return {
      ...stats(pool, Date.now()),
      limitOverride: pool.limitOverride,
      reconciliation: reconciliation === null ? null : (JSON.parse(reconciliation) as Reconciliation),
    };
  }
}
