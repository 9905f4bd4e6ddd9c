/**
 * Bench-only snapshot of the coordinator before group commit (commit e7802b4): one SQLite
 * transaction per transition, every answer held behind its own commit. `npm run bench` measures
 * it next to the current coordinator in the same run ("before" and "after"). Not used elsewhere.
 */
import { DurableObject } from "cloudflare:workers";
import {
  type AcquireOptions,
  type AcquireResult,
  type Effects,
  type Failure,
  type Lease,
  type LeaseGrant,
  type LeaseOutcome,
  type LeaseRef,
  type PoolEnv,
  type PoolState,
  type PoolStats,
  type ReleaseResult,
  type RenewResult,
  type Waiter,
  LeaseError,
  acquire,
  configFromEnv,
  createPool,
  expected,
  isLeaseError,
  nextExpiryAt,
  nextWakeAt,
  release,
  renew,
  stats,
  tick,
  formatTimeout,
  timeoutFacts,
} from "../../src/core/index.ts";

/** The variables the coordinator reads; the same names as everywhere else in leasegate. */
export interface CoordinatorEnv extends PoolEnv {}

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
export class WritePerCallCoordinator extends DurableObject<CoordinatorEnv> {
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
      const config = configFromEnv(this.env);
      const leases = sql
        .exec<{ id: string; fence: number; holder: string; granted_at: number; expires_at: number }>(
          "SELECT id, fence, holder, granted_at, expires_at FROM leases",
        )
        .toArray()
        .map((r) => ({ id: r.id, fence: r.fence, holder: r.holder, grantedAt: r.granted_at, expiresAt: r.expires_at }));
      const fenceRow = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'next_fence'").toArray()[0];
      this.pool = createPool(config, { leases, nextFence: fenceRow ? Number(fenceRow.value) : 1 });
      this.persistedFence = this.pool.nextFence;
    } catch (error) {
      this.configError = isLeaseError(error) ? error : new LeaseError("INVALID_CONFIG", String(error));
      return;
    }
    // Leases that expired while the object was gone are reaped now; live ones are honored.
    this.afterTransition(tick(this.pool, Date.now()), []);
  }

  private requirePool(): PoolState {
    if (!this.pool) throw this.configError ?? new LeaseError("INTERNAL", "Coordinator not loaded");
    return this.pool;
  }

  /**
   * Persists what a transition changed, wakes or fails the waiters it settled, and re-arms the
   * timer. `written` are leases granted or renewed by the call itself.
   */
  private afterTransition(fx: Effects, written: Lease[]): void {
    const pool = this.requirePool();
    const sql = this.ctx.storage.sql;
    const upserts = written.concat(fx.granted);
    const deletes = fx.expired;
    if (upserts.length > 0 || deletes.length > 0) {
      this.ctx.storage.transactionSync(() => {
        for (const l of upserts) {
          sql.exec(
            "INSERT OR REPLACE INTO leases (id, fence, holder, granted_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            l.id,
            l.fence,
            l.holder,
            l.grantedAt,
            l.expiresAt,
          );
        }
        for (const l of deletes) sql.exec("DELETE FROM leases WHERE id = ?", l.id);
        if (pool.nextFence !== this.persistedFence) {
          sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_fence', ?)", String(pool.nextFence));
          this.persistedFence = pool.nextFence;
        }
      });
    }
    for (const lease of fx.granted) this.settle(lease.id, { ok: true, lease: grantOf(lease) });
    for (const w of fx.timedOut) this.settle(w.leaseId, this.timedOut(pool, w));
    this.schedule();
  }

  private timedOut(pool: PoolState, w: Waiter): AcquireResult {
    const facts = timeoutFacts(pool, w);
    return { ok: false, code: "ACQUIRE_TIMEOUT", message: formatTimeout(facts), retryAfterMs: facts.retryAfterMs };
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
    if (this.pool) this.afterTransition(tick(this.pool, Date.now()), []);
  }

  /** Reaps expired leases; re-arms itself while leases are held. */
  override async alarm(): Promise<void> {
    this.alarmAt = null;
    if (!this.pool) return;
    this.afterTransition(tick(this.pool, Date.now()), []);
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
      const pool = this.requirePool();
      if (typeof options !== "object" || options === null) {
        throw new LeaseError("INVALID_ARGUMENT", expected("options", "an object", options));
      }
      const opts = options;
      const leaseId = crypto.randomUUID();
      const { outcome, effects } = acquire(pool, { leaseId, holder: opts.holder ?? "", waitMs: opts.waitMs, ttlMs: opts.ttlMs }, Date.now());
      if (outcome.status === "granted") {
        this.afterTransition(effects, [outcome.lease]);
        return { ok: true, lease: grantOf(outcome.lease) };
      }
      if (outcome.status === "rejected") {
        this.afterTransition(effects, []);
        return { ok: false, code: outcome.code, message: outcome.message, retryAfterMs: outcome.retryAfterMs };
      }
      const waiting = new Promise<AcquireResult>((resolve) => this.waiters.set(leaseId, resolve));
      this.afterTransition(effects, []);
      return await waiting;
    } catch (error) {
      return failureOf(error);
    }
  }

  /**
   * Gives a slot back. Unknown ids and stale fences fail with a code and change nothing.
   *
   * @example
   * await stub.release({ leaseId: lease.id, fence: lease.fence });
   */
  async release(ref: LeaseRef): Promise<ReleaseResult> {
    try {
      const { outcome, effects } = release(this.requirePool(), ref, Date.now());
      if (outcome.status === "ok") this.ctx.storage.sql.exec("DELETE FROM leases WHERE id = ?", outcome.lease.id);
      this.afterTransition(effects, []);
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
      this.afterTransition(effects, outcome.status === "ok" ? [outcome.lease] : []);
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
  async stats(): Promise<PoolStats> {
    return stats(this.requirePool(), Date.now());
  }
}
