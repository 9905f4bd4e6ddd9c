import { DurableObject } from "cloudflare:workers";
import {
  type AcquireManyResult,
  type AcquireOptions,
  type AcquireResult,
  type ConnectionCounts,
  type ControlResult,
  type Reconciliation,
  type RevokeResult,
  type Effects,
  type Failure,
  type Lease,
  type LeaseGrant,
  type LeaseOutcome,
  type LeaseRef,
  type OperatorStats,
  type PoolEnv,
  type PoolState,
  type PoolStats,
  type ReleaseManyResult,
  type ReleaseResult,
  type RenewResult,
  type ShardLoad,
  type ShardRef,
  type Waiter,
  LeaseError,
  BOUNDS,
  acquire,
  capacity,
  checkBatch,
  checkInt,
  compareConnections,
  configFromEnv,
  findByPrefix,
  createPool,
  expected,
  isLeaseError,
  nextExpiryAt,
  nextWakeAt,
  reconfigure,
  release,
  renew,
  retryAfterHint,
  setPaused,
  shardConfig,
  stats,
  tick,
  timeoutMessage,
} from "../src/core/index.ts";


/** The variables the coordinator reads; the same names as everywhere else in leasegate. */
export interface CoordinatorEnv extends PoolEnv {}

/** Rows per statement in a flush. Durable Object SQLite binds at most 100 values per statement. */
const DELETE_CHUNK = 100;
const INSERT_CHUNK = 20;
/** One statement text each, so the object prepares it once; a short chunk repeats its last item. */
const DELETE_LEASES = `DELETE FROM leases WHERE id IN (${Array(DELETE_CHUNK).fill("?").join(", ")})`;
const INSERT_LEASES = `INSERT OR REPLACE INTO leases (id, fence, holder, granted_at, expires_at) VALUES ${Array(INSERT_CHUNK).fill("(?, ?, ?, ?, ?)").join(", ")}`;

/** `items` in chunks of exactly `size`, the last one padded with its own last item (for fixed statements). */
function* paddedChunks<T>(items: T[], size: number): Generator<T[]> {
  for (let i = 0; i < items.length; i += size) {
    const chunk = items.slice(i, i + size);
    while (chunk.length < size) chunk.push(chunk[chunk.length - 1]!);
    yield chunk;
  }
}

function grantOf(lease: Lease): LeaseGrant {
  return { id: lease.id, fence: lease.fence, holder: lease.holder, grantedAt: lease.grantedAt, expiresAt: lease.expiresAt };
}

function failureOf(error: unknown): Failure {
  if (isLeaseError(error)) return { ok: false, code: error.code, message: error.message };
  return { ok: false, code: "INTERNAL", message: "The coordinator failed to handle the call" };
}

function leaseFailure(outcome: Exclude<LeaseOutcome, { status: "ok" }>): Failure {
  return { ok: false, code: outcome.code, message: outcome.message };
}

/**
 * The global admission controller for one pool (one object per pool name: `idFromName(pool)`).
 *
 * Decisions are made by `src/core/`; this class only keeps the state in the object's SQLite
 * storage, turns deadlines into a timer and an alarm, and parks waiters as pending RPC promises
 * that are resolved the moment a slot frees — nobody polls.
 *
 * @example
 * const stub = env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName("main"));
 * const result = await stub.acquire({ holder: "req-1", waitMs: 2000 });
 */
export class ConnectionCoordinator extends DurableObject<CoordinatorEnv> {
  private pool: PoolState | undefined;
  private configError: LeaseError | undefined;
  /** The fence counter as last written, so renewals and releases skip the meta row. */
  private persistedFence = 0;
  /** Resolvers of queued acquire calls, by the lease id their waiter will be granted under. */
  private readonly waiters = new Map<string, (result: AcquireResult) => void>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAt = Infinity;
  /** The alarm time we last stored; the alarm only has to be early enough, never exact. */
  private alarmAt: number | null = null;
  /** Shard `index/count` as persisted in meta, or null for an unsharded pool. */
  private shard: string | null = null;
  /** Lease rows to write at the next flush, by id: the lease to upsert, or null to delete. */
  private readonly staged = new Map<string, Lease | null>();
  /** The flush every staged write will be part of; resolves once its transaction is issued. */
  private flushing: Promise<void> | undefined;
  /** Resolves when the last flushed batch is durable. */
  private committing: Promise<void> = Promise.resolve();

  constructor(ctx: DurableObjectState, env: CoordinatorEnv) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      this.load();
    });
  }

  private load(): void {
    const sql = this.ctx.storage.sql;
    this.ctx.storage.transactionSync(() => {
      sql.exec(`CREATE TABLE IF NOT EXISTS leases (
        id TEXT PRIMARY KEY,
        fence INTEGER NOT NULL,
        holder TEXT NOT NULL,
        granted_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      )`);
      sql.exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
    });
    try {
      // A shard enforces its part of LEASE_LIMIT (persisted when a sharded client first said so).
      this.shard = this.readMeta("shard");
      const envConfig = this.baseConfig();
      // An operator's live limit change outlives restarts; LEASE_LIMIT is only the default.
      const override = this.readMeta("limit");
      const config = override === null ? envConfig : { ...envConfig, limit: Number(override) };
      const leases = sql
        .exec<{ id: string; fence: number; holder: string; granted_at: number; expires_at: number }>(
          "SELECT id, fence, holder, granted_at, expires_at FROM leases",
        )
        .toArray()
        .map((r) => ({ id: r.id, fence: r.fence, holder: r.holder, grantedAt: r.granted_at, expiresAt: r.expires_at }));
      const fenceRow = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'next_fence'").toArray()[0];
      this.pool = createPool(config, { leases, nextFence: fenceRow ? Number(fenceRow.value) : 1 });
      this.persistedFence = this.pool.nextFence;
      this.pool.paused = this.readMeta("paused") === "1";
    } catch (error) {
      this.configError = isLeaseError(error) ? error : new LeaseError("INVALID_CONFIG", String(error));
      return;
    }
    // Leases that expired while the object was gone are reaped now; live ones are honored.
    void this.afterTransition(tick(this.pool, Date.now()), []);
  }

  /** LEASE_* from env, split to this object's part when it is a shard. */
  private baseConfig() {
    const config = configFromEnv(this.env);
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
    if (typeof ref !== "object" || ref === null) throw new LeaseError("INVALID_ARGUMENT", expected("shard", "an object { index, count }", ref));
    // Validated on every call, also when it matches what is persisted.
    const next = shardConfig(configFromEnv(this.env), ref.index, ref.count);
    const key = `${ref.index}/${ref.count}`;
    if (key === this.shard) return;
    const override = this.readMeta("limit");
    const config = override === null ? next : { ...next, limit: Number(override) };
    const fx = reconfigure(pool, config, Date.now());
    this.writeMeta("shard", key);
    this.shard = key;
    void this.afterTransition(fx, []);
  }

  /** What a sharded client picks shards by: held, waiting, and the slots grantable now (0 while paused). */
  private loadOf(pool: PoolState): ShardLoad {
    return { held: pool.leases.size, waiting: pool.queue.length, limit: pool.paused ? 0 : capacity(pool) };
  }

  private requirePool(): PoolState {
    if (!this.pool) throw this.configError ?? new LeaseError("INTERNAL", "Coordinator not loaded");
    return this.pool;
  }

  /**
   * Stages what a transition changed, wakes or fails the waiters it settled, and re-arms the
   * timer. `written` are leases granted or renewed by the call itself. Resolves once the writes
   * that grants and renewals depend on are issued (see `flushSoon`); callers answer only then.
   */
  private afterTransition(fx: Effects, written: Lease[]): Promise<void> {
    const pool = this.requirePool();
    for (const l of written) this.staged.set(l.id, l);
    for (const l of fx.granted) this.staged.set(l.id, l);
    for (const l of fx.expired) this.staged.set(l.id, null);
    for (const w of fx.timedOut) this.settle(w.leaseId, this.timedOut(pool, w));
    const mustWrite = written.length > 0 || fx.granted.length > 0;
    // Only grants and renewals wait for their write. Deletes are issued in the same batch (the
    // end of this task, or with the batch collecting behind a commit) but a release's answer does
    // not wait for them: a lost delete would only make a restarted object count the lease as held
    // until its TTL — fewer connections than the limit for a while, never more.
    const flushing = mustWrite || this.staged.size > 0 ? this.flushSoon() : undefined;
    const flushed = mustWrite && flushing ? flushing : Promise.resolve();
    if (fx.granted.length > 0) {
      const granted = fx.granted;
      void flushed.then(() => {
        for (const lease of granted) this.settle(lease.id, { ok: true, lease: grantOf(lease), load: this.loadOf(pool) });
      });
    }
    this.schedule();
    return flushed;
  }

  /**
   * Group commit. Staged writes go into one transaction per batch: the batch flushes as soon as
   * the previous batch is durable (`storage.sync()`), so N calls arriving during one commit cost
   * one more commit instead of N (a commit costs several no-op RPCs). Durability is unchanged for everything a caller relies on: a grant or renewal
   * is answered only after this promise resolves, i.e. after its row and the fence counter were
   * written, and workerd's output gate holds that answer until the write is durable. A crash before
   * the flush loses only calls whose answers were never sent. A release's answer does not wait for
   * its delete: a lost delete makes a restarted object count the lease as held until its TTL
   * reaps it — fewer connections than the limit for a while, never more.
   */
  private flushSoon(): Promise<void> {
    this.flushing ??= (async () => {
      // While the previous batch commits, this one collects every call that arrives meanwhile;
      // with nothing in flight it flushes at the end of this task (no timer: a timer turn costs
      // milliseconds in workerd under load).
      await this.committing;
      this.flushing = undefined;
      this.flush();
      this.committing = this.ctx.storage.sync().catch(() => {});
    })();
    return this.flushing;
  }

  private flush(): void {
    const pool = this.requirePool();
    const sql = this.ctx.storage.sql;
    if (this.staged.size === 0 && pool.nextFence === this.persistedFence) return;
    const deleted: string[] = [];
    const written: Lease[] = [];
    for (const [id, lease] of this.staged) {
      if (lease === null) deleted.push(id);
      else written.push(lease);
    }
    // A statement per chunk, not per row: in workerd each statement costs a good part of a small
    // commit. Repeating a row in a chunk deletes or writes the same row again: no effect.
    this.ctx.storage.transactionSync(() => {
      for (const ids of paddedChunks(deleted, DELETE_CHUNK)) sql.exec(DELETE_LEASES, ...ids);
      for (const rows of paddedChunks(written, INSERT_CHUNK)) {
        sql.exec(INSERT_LEASES, ...rows.flatMap((l) => [l.id, l.fence, l.holder, l.grantedAt, l.expiresAt]));
      }
      if (pool.nextFence !== this.persistedFence) {
        sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_fence', ?)", String(pool.nextFence));
        this.persistedFence = pool.nextFence;
      }
    });
    this.staged.clear();
  }

  private timedOut(pool: PoolState, w: Waiter): AcquireResult {
    return { ok: false, code: "ACQUIRE_TIMEOUT", message: timeoutMessage(pool, w), retryAfterMs: retryAfterHint(pool), load: this.loadOf(pool) };
  }

  private settle(leaseId: string, result: AcquireResult): void {
    const resolve = this.waiters.get(leaseId);
    if (resolve) {
      this.waiters.delete(leaseId);
      resolve(result);
    }
  }

  /**
   * One in-memory timer for the next deadline or expiry (precise while the object lives), and a
   * durable alarm for the next expiry, so a dead holder's slot comes back even if the object was
   * evicted in between.
   */
  private schedule(): void {
    const pool = this.requirePool();
    const wakeAt = nextWakeAt(pool);
    if (wakeAt === null) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Infinity;
    } else if (wakeAt < this.timerAt || this.timer === undefined) {
      clearTimeout(this.timer);
      this.timerAt = wakeAt;
      this.timer = setTimeout(() => this.onTimer(), Math.max(0, wakeAt - Date.now()));
    }
    const expiryAt = nextExpiryAt(pool);
    if (expiryAt !== null && (this.alarmAt === null || expiryAt < this.alarmAt)) {
      this.alarmAt = expiryAt;
      void this.ctx.storage.setAlarm(expiryAt);
    }
  }

  private onTimer(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.pool) void this.afterTransition(tick(this.pool, Date.now()), []);
  }

  /** Reaps expired leases; re-arms itself while leases are held. */
  override async alarm(): Promise<void> {
    this.alarmAt = null;
    if (!this.pool) return;
    await this.afterTransition(tick(this.pool, Date.now()), []);
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
      const answers = checkBatch("requests", requests).map((options) => this.acquireOne(options, false).catch(failureOf));
      return { ok: true, results: await Promise.all(answers) };
    } catch (error) {
      return failureOf(error);
    }
  }

  /** One acquire; with `queue` false, `null` instead of waiting or being shed. */
  private async acquireOne(options: AcquireOptions, queue: boolean): Promise<AcquireResult | null> {
    const pool = this.requirePool();
    // An array is an object too, and would otherwise be taken as "all defaults".
    if (typeof options !== "object" || options === null || Array.isArray(options)) {
      throw new LeaseError("INVALID_ARGUMENT", expected("options", "an object", options));
    }
    const opts = options;
    if (opts.shard !== undefined) this.applyShard(pool, opts.shard);
    const leaseId = crypto.randomUUID();
    const { outcome, effects } = acquire(
      pool,
      // Only a missing holder defaults; null or another type is refused like any bad field.
      {
        leaseId,
        holder: opts.holder === undefined ? "" : opts.holder,
        waitMs: opts.waitMs,
        ttlMs: opts.ttlMs,
        priority: opts.priority,
        tenant: opts.tenant,
        queue,
      },
      Date.now(),
    );
    if (outcome.status === "granted") {
      await this.afterTransition(effects, [outcome.lease]);
      return { ok: true, lease: grantOf(outcome.lease), load: this.loadOf(pool) };
    }
    if (outcome.status === "rejected") {
      void this.afterTransition(effects, []);
      return { ok: false, code: outcome.code, message: outcome.message, retryAfterMs: outcome.retryAfterMs, load: this.loadOf(pool) };
    }
    if (outcome.status === "deferred") {
      void this.afterTransition(effects, []);
      return null;
    }
    const waiting = new Promise<AcquireResult>((resolve) => this.waiters.set(leaseId, resolve));
    void this.afterTransition(effects, []);
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
      const { outcome, effects } = release(this.requirePool(), ref, Date.now());
      // Not awaited: see flushSoon for why a release may answer before its delete is written.
      if (outcome.status === "ok") this.staged.set(outcome.lease.id, null);
      void this.afterTransition(effects, []);
      return outcome.status === "ok" ? { ok: true, released: true } : leaseFailure(outcome);
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
    try {
      const { outcome, effects } = renew(this.requirePool(), ref, Date.now(), ttlMs);
      await this.afterTransition(effects, outcome.status === "ok" ? [outcome.lease] : []);
      return outcome.status === "ok" ? { ok: true, lease: grantOf(outcome.lease) } : leaseFailure(outcome);
    } catch (error) {
      return failureOf(error);
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

  // ── Operator controls. Each is one transition, persisted before it answers. ──

  /** Operator's last reconciliation, kept in memory: it is re-read within a period after a restart. */
  private lastReconciliation: Reconciliation | null = null;

  private readMeta(key: string): string | null {
    const row = this.ctx.storage.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray()[0];
    return row ? row.value : null;
  }

  private writeMeta(key: string, value: string | null): void {
    if (value === null) this.ctx.storage.sql.exec("DELETE FROM meta WHERE key = ?", key);
    else this.ctx.storage.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
  }

  private controlState(pool: PoolState): ControlResult {
    const override = this.readMeta("limit");
    return { ok: true, paused: pool.paused === true, limit: pool.config.limit, limitOverride: override === null ? null : Number(override) };
  }

  /**
   * Stops granting (drain, say before a migration): held leases run on, callers queue and time out
   * at their deadlines. Persisted: a restarted object stays paused.
   *
   * @example
   * await stub.pause(); // wait until (await stub.stats()).held === 0, migrate, then stub.resume()
   */
  async pause(): Promise<ControlResult> {
    return this.setPausedState(true);
  }

  /**
   * Grants again; queued callers get free slots at once, in order.
   *
   * @example
   * await stub.resume();
   */
  async resume(): Promise<ControlResult> {
    return this.setPausedState(false);
  }

  private setPausedState(paused: boolean): ControlResult | Failure {
    try {
      const pool = this.requirePool();
      const fx = setPaused(pool, paused, Date.now());
      this.writeMeta("paused", paused ? "1" : null);
      this.afterTransition(fx, []);
      return this.controlState(pool);
    } catch (error) {
      return failureOf(error);
    }
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
      const pool = this.requirePool();
      const target = limit === null ? this.baseConfig().limit : checkInt("limit", limit, 1, BOUNDS.limit);
      const fx = reconfigure(pool, { ...pool.config, limit: target }, Date.now());
      this.writeMeta("limit", limit === null ? null : String(pool.config.limit));
      this.afterTransition(fx, []);
      return this.controlState(pool);
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
    try {
      const pool = this.requirePool();
      const lease = findByPrefix(pool, idOrPrefix);
      const { outcome, effects } = release(pool, { leaseId: lease.id, fence: lease.fence }, Date.now());
      if (outcome.status === "ok") this.ctx.storage.sql.exec("DELETE FROM leases WHERE id = ?", lease.id);
      this.afterTransition(effects, []);
      // An already-expired lease was reaped by the same transition: the slot is free either way.
      return { ok: true, released: true, idPrefix: lease.id.slice(0, 8), holder: lease.holder };
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Compares counts the caller read from `pg_stat_activity` with the leases held right now, and
   * keeps the result for `operatorStats()`.
   *
   * @example
   * const r = await stub.reconcile(await countConnections(sql, "my-app"));
   */
  async reconcile(counts: ConnectionCounts): Promise<Reconciliation> {
    const pool = this.requirePool();
    checkInt("roleConnections", counts.roleConnections, 0, Number.MAX_SAFE_INTEGER);
    checkInt("appConnections", counts.appConnections, 0, Number.MAX_SAFE_INTEGER);
    this.lastReconciliation = compareConnections({ held: pool.leases.size, limit: pool.config.limit }, counts, Date.now());
    return this.lastReconciliation;
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
    const override = this.readMeta("limit");
    return {
      ...stats(pool, Date.now()),
      limitOverride: override === null ? null : Number(override),
      reconciliation: this.lastReconciliation,
    };
  }
}
