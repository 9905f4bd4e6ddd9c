import { DurableObject } from "cloudflare:workers";
import {
  type AcquireManyResult,
  type AcquireOptions,
  type AcquireResult,
  type Bounds,
  type ConnectionCounts,
  type Failure,
  type LearnFailure,
  type LearnResult,
  type LearnedLimit,
  type RoomReading,
  type ControlResult,
  type Effects,
  type Lease,
  type LeaseRef,
  type OperatorStats,
  type PoolEnv,
  type PoolState,
  type PoolStats,
  type ReconcileResult,
  type Reconciliation,
  type ReleaseManyResult,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  type ShardRef,
  LeaseError,
  checkBatch,
  compareConnections,
  configFromEnv,
  expected,
  isLeaseError,
  FIXED_LIMIT,
  checkReading,
  learnSettingsFromEnv,
  learnState,
  learnedLimit,
  limitSource,
  withCaps,
  type BoundsLog,
  boundsLog,
  confirmBounds,
  planBounds,
  startRecovery,
  reconfigure,
  restore,
  shardConfig,
  snapshot,
  stats,
  tick,
} from "../src/core/index.ts";
import { type CoordinatorBackend, checkCounts } from "../src/engine/coordinator.ts";
import {
  type Settlements,
  type Step,
  type StepFn,
  WakeTimer,
  Waiters,
  failureOf,
  guarded,
  settlementsOf,
  steps,
} from "../src/engine/index.ts";
import { CoordinatorStore } from "./storage.ts";
import { LeaseTokens } from "./tokens.ts";

/** The variables the coordinator reads; the same names as everywhere else in leasegate. */
export interface CoordinatorEnv extends PoolEnv {}

/** Counters and histograms are written at most this often while they change, ms (a crash loses at most this much). */
const SNAPSHOT_EVERY_MS = 1_000;

/**
 * The global admission controller for one pool (one object per pool name: `idFromName(pool)`).
 *
 * Decisions are made by `src/core/` and the shared engine (`src/engine/`) on state held in memory:
 * an acquire, renewal or release is answered as soon as the core has decided, with no storage
 * write on its path. Waiters are parked as pending RPC promises resolved the moment a slot frees.
 * What survives a restart: fences keep growing and the limit holds, because the object writes a
 * small bounds record ahead of need (`src/core/recovery.ts`) and a restarted object recovers the
 * live leases from their holders' renewals before it grants again — only those whose token (a MAC
 * with the object's own key, on every grant and renewal: `./tokens.ts`) verifies. Operator state is
 * written when it changes; counters and the wait histogram at most once a second, off the request path.
 *
 * @example
 * const stub = env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName("main"));
 * const result = await stub.acquire({ holder: "req-1", waitMs: 2000 });
 */
export class ConnectionCoordinator extends DurableObject<CoordinatorEnv> implements CoordinatorBackend {
  private pool: PoolState | undefined;
  private configError: LeaseError | undefined;
  private readonly store: CoordinatorStore;
  /** Signs every grant and renewal answered, and checks the tokens renewals bring back after a restart. */
  private tokens: LeaseTokens | undefined;
  private readonly waiters = new Waiters();
  // Set on a grant and left to fire once after the last release: no timer is set per call.
  private readonly timer = new WakeTimer(() => this.onTimer(), { keepWhenIdle: true });
  /** Shard `index/count` as persisted in meta, or null for an unsharded pool. */
  private shard: string | null = null;
  /** The bounds known to be durable (any fence and expiry inside them is answered at once) and the last written. */
  private bounds: BoundsLog = boundsLog(null);
  /** Resolves once the last bounds written are durable. */
  private confirming: Promise<void> = Promise.resolve();
  /** The snapshot (counters, histogram, hold stats) changed since it was last written. */
  private dirty = false;
  private snapshotTimer: ReturnType<typeof setTimeout> | undefined;
  /** `LEASE_LIMIT=auto`: the last learning a Worker handed in (kept in meta), and the last failure after it. */
  private learned: LearnedLimit | null = null;
  private learnFailure: LearnFailure | null = null;
  /** When a Worker claimed the next learning (`learnDue`): others wait until it reports or the claim lapses. */
  private learnClaimedAt: number | null = null;

  constructor(ctx: DurableObjectState, env: CoordinatorEnv) {
    super(ctx, env);
    this.store = new CoordinatorStore(ctx.storage);
    void ctx.blockConcurrencyWhile(() => this.load());
  }

  /**
   * Before any call: the snapshot, bounds and token key are read (the key is created on the first
   * start), the recovery window starts if leases from before may still be alive, and bounds for the
   * first grants are made durable.
   */
  private async load(): Promise<void> {
    const { snapshot: snap, bounds, earlier } = this.store.load();
    this.tokens = new LeaseTokens(this.store.tokenKey());
    let pool: PoolState;
    try {
      // A shard enforces its part of LEASE_LIMIT (persisted when a sharded client first said so).
      this.shard = this.store.readMeta("shard");
      // The last learning, worked out again with the caps of this object's env now (a deploy that
      // lowered LEASE_LIMIT_MAX applies at once, not at the next learning).
      const learned = this.store.readMeta("learned");
      const learn = learnSettingsFromEnv(this.env);
      const kept = learned === null ? null : (JSON.parse(learned) as LearnedLimit);
      this.learned = kept && learn && learnedLimit(withCaps(kept.terms, learn), kept.learnedAt);
      pool = restore(this.baseConfig(), snap, []);
    } catch (error) {
      this.configError = isLeaseError(error) ? error : new LeaseError("INVALID_CONFIG", String(error));
      return;
    }
    // An object stored by an earlier version kept lease rows: the window lasts until they expire
    // (they carry no token, so none is recovered: their holders are told LEASE_NOT_FOUND and stop).
    const stored =
      earlier === null
        ? bounds
        : {
            fenceCeiling: Math.max(bounds?.fenceCeiling ?? 1, pool.nextFence, earlier.maxFence + 1),
            horizon: Math.max(bounds?.horizon ?? 0, earlier.maxExpiresAt),
          };
    const now = Date.now();
    // Revoked leases stay revoked across a restart: their holders cannot recover them.
    const revoked = this.store.readMeta("revoked");
    startRecovery(pool, stored, now, revoked === null ? [] : (JSON.parse(revoked) as string[]));
    this.pool = pool;
    this.bounds = boundsLog(stored);
    // Fences for the first grants, durable before any: a restarted object never waits for them.
    const { write } = planBounds(this.bounds, pool, [], now);
    if (write !== null) this.writeBounds(write);
    if (earlier !== null) {
      await this.store.writeSnapshot(snapshot(pool), false);
      this.store.dropEarlier();
    }
    await this.confirming;
  }

  /** LEASE_* from env (with `LEASE_LIMIT=auto`, the learned limit once there is one), split to this object's part when it is a shard. */
  private baseConfig() {
    const env = configFromEnv(this.env);
    const config = this.learned && learnSettingsFromEnv(this.env) ? { ...env, limit: this.learned.limit } : env;
    if (this.shard === null) return config;
    const [index, count] = this.shard.split("/").map(Number);
    return shardConfig(config, index!, count!);
  }

  /**
   * A sharded client names the part this object is. Applied once (one transition, persisted in
   * meta) and again only if the client's split changes, e.g. a new LEASE_SHARDS. An operator's
   * limit override still wins: it is the operator's word for this object.
   */
  private applyShard(pool: PoolState, ref: ShardRef): void {
    if (typeof ref !== "object" || ref === null)
      throw new LeaseError("INVALID_ARGUMENT", expected("shard", "an object { index, count }", ref));
    // Validated on every call, also when it matches what is persisted.
    const next = shardConfig(configFromEnv(this.env), ref.index, ref.count);
    const key = `${ref.index}/${ref.count}`;
    if (key === this.shard) return;
    const fx = reconfigure(pool, { ...next, limit: pool.limitOverride ?? next.limit }, Date.now());
    this.store.writeMeta("shard", key);
    this.shard = key;
    void this.afterStep({ answer: null, effects: fx });
  }

  private requirePool(): PoolState {
    if (!this.pool) throw this.configError ?? new LeaseError("INVALID_CONFIG", "Coordinator not loaded");
    return this.pool;
  }

  /** The token check the core asks in a recovery window (the core has no crypto). */
  private readonly verify = (ref: LeaseRef): boolean => this.tokens?.verify(ref) ?? false;

  /** A result as answered: a lease in it carries its token. */
  private signed<R extends AcquireResult | RenewResult>(result: R): R {
    if (!result.ok || this.tokens === undefined) return result;
    return { ...result, lease: this.tokens.signed(result.lease) };
  }

  /** Runs one step on the pool now; see `afterStep` for `durable`. */
  private run<T>(step: StepFn<T>): { step: Step<T>; durable: Promise<void> | null } {
    const done = step(this.requirePool(), Date.now());
    return { step: done, durable: this.afterStep(done) };
  }

  /**
   * Answers the waiters a step settled and re-arms the timer. Nothing is written on this path:
   * the answer leaves at once, unless it hands out a fence or an expiry beyond the durable bounds
   * (never in steady state: bounds are written half a step ahead; a per-call `ttlMs` longer than
   * the step can be). Then `durable` resolves once bounds covering it are, and grants wait for it.
   */
  private afterStep(step: Step<unknown>): Promise<void> | null {
    const pool = this.requirePool();
    const fx = step.effects;
    const handed = fx.granted.length === 0 ? (step.written ?? []) : [...(step.written ?? []), ...fx.granted];
    const durable = handed.length === 0 ? null : this.cover(pool, handed);
    const settled: Settlements = settlementsOf(pool, fx).map(([id, r]) => [id, this.signed(r)] as const);
    if (durable === null) this.waiters.settleAll(settled);
    else {
      this.waiters.settleAll(settled.filter(([, r]) => !r.ok));
      const granted = settled.filter(([, r]) => r.ok);
      // A grant whose bounds could not be written is never answered as one: the waiter hears the
      // failure (the slot comes back at the lease's TTL, as nobody renews it).
      durable.then(
        () => this.waiters.settleAll(granted),
        (error: unknown) => this.waiters.settleAll(granted.map(([id]) => [id, failureOf(error)] as const)),
      );
    }
    this.timer.arm(this.waiters.wakeAt(pool));
    this.changed();
    return durable;
  }

  /**
   * Writes the next bounds in the background when `handed` brings the pool within half a step of
   * the last ones written; null when the durable bounds already cover `handed`, else a promise
   * that resolves once they do.
   */
  private cover(pool: PoolState, handed: readonly Lease[]): Promise<void> | null {
    const { write, wait } = planBounds(this.bounds, pool, handed, Date.now());
    if (write !== null) this.writeBounds(write);
    if (!wait) return null;
    const durable = this.confirming;
    // Not awaited by a release's own answer: a failure must not become an unhandled rejection.
    durable.catch(() => {});
    return durable;
  }

  /**
   * Writes `next` without holding any answer behind the output gate; `confirming` resolves once it
   * is durable (`sync()` resolves after every write issued before it).
   */
  private writeBounds(next: Bounds): void {
    this.store.writeBounds(next).catch(() => {});
    this.confirming = this.store.sync().then(
      () => confirmBounds(this.bounds, next),
      (error: unknown) => {
        // The next call that needs bounds writes them again.
        this.bounds.written = this.bounds.confirmed;
        throw error;
      },
    );
  }

  /**
   * Counters, histogram and hold stats changed: written off the request path (never holding an
   * answer) at most once a second, so a crash loses at most the last second of counts and an
   * object that goes idle has written everything long before it is evicted.
   */
  private changed(): void {
    this.dirty = true;
    if (this.snapshotTimer !== undefined) return;
    this.snapshotTimer = setTimeout(() => {
      this.snapshotTimer = undefined;
      if (!this.dirty || !this.pool) return;
      this.dirty = false;
      this.store.writeSnapshot(snapshot(this.pool), true).catch(() => {
        this.changed();
      });
    }, SNAPSHOT_EVERY_MS);
  }

  private onTimer(): void {
    if (this.pool) void this.afterStep({ answer: null, effects: tick(this.pool, Date.now()) });
  }

  /**
   * Brings the pool to now. Nothing sets an alarm any more (leases live in memory; the timer reaps
   * them while the object lives); one set by an earlier version fires once and does this.
   */
  override async alarm(): Promise<void> {
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
   * granted now if a slot is free for it, in order; a request that would wait
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
    if (typeof options === "object" && options !== null && options.shard !== undefined)
      this.applyShard(pool, options.shard);
    const leaseId = crypto.randomUUID();
    const { step, durable } = this.run(steps.acquire(leaseId, options, queue, this.verify));
    const answer = step.answer;
    if (answer.kind === "deferred") return null;
    if (answer.kind === "result") {
      if (answer.result.ok && durable !== null) await durable;
      return this.signed(answer.result);
    }
    const waiting = this.waiters.park(leaseId, options.holder ?? "", Date.now());
    this.waiters.queued(leaseId, answer.deadline, answer.position);
    this.timer.arm(this.waiters.wakeAt(pool));
    return await waiting;
  }

  /**
   * Gives a slot back. Unknown ids and stale fences fail with a code and change nothing.
   *
   * @example
   * await stub.release(leaseRef(lease));
   */
  async release(ref: LeaseRef): Promise<ReleaseResult> {
    return this.releaseOne(ref);
  }

  /**
   * Several releases in one call, in order; each answers as `release` would.
   *
   * @example
   * const r = await stub.releaseMany([leaseRef(a), leaseRef(b)]);
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
      // Waiters it granted may wait for bounds (see afterStep); the release's own answer does not.
      return this.run(guarded(steps.release(ref, this.verify))).step.answer;
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Extends a live lease by `ttlMs` (default: the pool's TTL) from now; the answer carries the
   * lease's new token. In a recovery window, an earlier lease is recovered only with its token.
   *
   * @example
   * const r = await stub.renew(leaseRef(lease));
   */
  async renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult> {
    try {
      const { step, durable } = this.run(guarded(steps.renew(ref, ttlMs, this.verify)));
      if (step.answer.ok && durable !== null) await durable;
      return this.signed(step.answer);
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Runs an operator's step and persists the pool's snapshot with it: the output gate holds this
   * answer (and any other leaving meanwhile) until it is durable, so "done" means "kept".
   */
  private async operator<T>(step: StepFn<T>): Promise<T> {
    try {
      const { step: done, durable } = this.run(step);
      this.dirty = false;
      const written = this.store.writeSnapshot(snapshot(this.requirePool()), false);
      await Promise.all([written, durable]);
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
  async stats(shard?: ShardRef): Promise<PoolStats> {
    // A sharded client names the part, so a shard not yet used shows its part, not LEASE_LIMIT.
    if (shard !== undefined) this.applyShard(this.requirePool(), shard);
    return stats(this.requirePool(), Date.now());
  }

  // ── Operator controls. Each is one transition, persisted before it answers (rare, so it may wait). ──

  /**
   * Stops granting (drain, say before a migration): held leases run on, callers queue and time out
   * at their deadlines. Persisted: a restarted object stays paused.
   *
   * @example
   * await stub.pause(); // wait until (await stub.stats()).held === 0, migrate, then stub.resume()
   */
  async pause(): Promise<ControlResult> {
    return this.operator(guarded(steps.pause(true)));
  }

  /**
   * Grants again; queued callers get free slots at once, in order.
   *
   * @example
   * await stub.resume();
   */
  async resume(): Promise<ControlResult> {
    return this.operator(guarded(steps.pause(false)));
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
      return await this.operator(guarded(steps.setLimit(limit, this.baseConfig().limit)));
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Revokes a lease by its id or an unambiguous prefix of at least 8 characters (stats show the
   * first 8). Its holder's next renewal fails with `LEASE_LOST`; the lease stays held — its
   * statement may still run — until the holder releases it or it expires.
   *
   * @example
   * await stub.revoke("3f2a9c1b");
   */
  async revoke(idOrPrefix: string): Promise<RevokeResult> {
    return this.operator(
      guarded((state, now) => {
        const step = steps.revoke(idOrPrefix)(state, now);
        // Kept with the revoke (the output gate holds the answer until it is durable): the ids of
        // the leases revoked and still held, so a restarted object does not recover them.
        const held = [...state.leases.values()].filter((l) => l.revoked).map((l) => l.id);
        this.store.writeMeta("revoked", JSON.stringify(held));
        return step;
      }),
    );
  }

  /**
   * Compares counts the caller read from `pg_stat_activity` with the leases held right now, and
   * keeps the result (across restarts) for `operatorStats()`.
   *
   * @example
   * const r = await stub.reconcile(await countConnections(sql, "my-app"));
   */
  async reconcile(counts: ConnectionCounts): Promise<ReconcileResult> {
    try {
      const pool = this.requirePool();
      checkCounts(counts);
      const result = compareConnections({ held: pool.leases.size, limit: pool.config.limit }, counts, Date.now());
      this.store.writeMeta("reconciliation", JSON.stringify(result));
      return { ok: true, ...result };
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * `stats()` plus what only operators need: the limit override and the last reconciliation.
   *
   * @example
   * const { paused, reconciliation } = await stub.operatorStats();
   */
  async operatorStats(shard?: ShardRef): Promise<OperatorStats> {
    const pool = this.requirePool();
    if (shard !== undefined) this.applyShard(pool, shard);
    const reconciliation = this.store.readMeta("reconciliation");
    const learns = learnSettingsFromEnv(this.env) !== null;
    const { limit: _, ...learning } = learns
      ? this.learnState(pool)
      : {
          limit: 0,
          limitSource: limitSource(pool.limitOverride, null),
          learned: null,
          learnedAgeMs: null,
          learnFailure: null,
        };
    return {
      ...stats(pool, Date.now()),
      limitOverride: pool.limitOverride,
      ...learning,
      reconciliation: reconciliation === null ? null : (JSON.parse(reconciliation) as Reconciliation),
    };
  }

  // ── LEASE_LIMIT=auto: the Worker reads the database, the object keeps and applies the limit. ──

  /** The learned limit's state now, for `learnLimit` and the operator stats. */
  private learnState(pool: PoolState) {
    return learnState(
      { limit: pool.config.limit, limitOverride: pool.limitOverride },
      this.learned,
      this.learnFailure,
      Date.now(),
    );
  }

  /**
   * True when the learned limit is older than this object's `LEASE_LEARN_INTERVAL_MS` (or there is
   * none) and no other Worker claimed the learning in the last 30 s; the caller then reads the room
   * and hands it to `learnLimit`. Cheap: no storage. Always false for a fixed limit.
   *
   * @example
   * if (await stub.learnDue()) await learnNow(stub, target);
   */
  async learnDue(): Promise<boolean> {
    const learn = learnSettingsFromEnv(this.env);
    if (learn === null) return false;
    const now = Date.now();
    if (this.learned && now - this.learned.learnedAt < learn.intervalMs) return false;
    if (this.learnClaimedAt !== null && now - this.learnClaimedAt < 30_000) return false;
    this.learnClaimedAt = now;
    return true;
  }

  /**
   * A reading a Worker took of the database: the learned limit is worked out here with this
   * object's own caps (`LEASE_HEADROOM`, `LEASE_LIMIT_MAX` from its env; any the caller sends are
   * ignored), kept (a restarted object starts from it) and applied as a live limit change — a
   * raise grants queued callers, a drop revokes nothing — unless an operator's limit holds. A
   * failed reading is kept for operators and answered as that failure; the limit stays. A pool
   * with a fixed `LEASE_LIMIT` refuses with `INVALID_ARGUMENT`.
   *
   * @example
   * const result = await stub.learnLimit({ ok: true, counts: await readRoomCounts(sql, "my-app") });
   */
  async learnLimit(reading: RoomReading): Promise<LearnResult> {
    try {
      const learn = learnSettingsFromEnv(this.env);
      if (learn === null) throw new LeaseError("INVALID_ARGUMENT", FIXED_LIMIT);
      const now = Date.now();
      const checked = checkReading(reading, now);
      this.learnClaimedAt = null;
      if (!checked.ok) {
        this.learnFailure = checked.failure;
        return checked.answer;
      }
      const learned = learnedLimit(withCaps(checked.counts, learn), now);
      this.learned = learned;
      this.learnFailure = null;
      this.store.writeMeta("learned", JSON.stringify(learned));
      const limit = learned.limit;
      const answer = await this.operator((state, at) => ({
        answer: null,
        effects:
          state.limitOverride === null
            ? reconfigure(state, { ...state.config, limit }, at)
            : { granted: [], timedOut: [], expired: [] },
      }));
      if (answer !== null) return answer as Failure;
      return { ok: true, ...this.learnState(this.requirePool()) };
    } catch (error) {
      return failureOf(error);
    }
  }
}

export type { Effects };
