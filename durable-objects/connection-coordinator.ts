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
  type Layout,
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
  LeaseError,
  checkBatch,
  compareConnections,
  configFromEnv,
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
  capacity,
  intFromEnv,
  shardOf,
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
import {
  EAGER_REPORT_GAP_MS,
  IDLE_REPORT_EVERY_MS,
  type LayoutResult,
  REPORT_EVERY_MS,
  ROOT_SHARD,
  type RootState,
  type ShardSide,
  type ShareAnswer,
  type ShareReport,
  applyShare,
  checkLayout,
  createRoot,
  createShardSide,
  notePeak,
  report,
  reportDue,
  rootSnapshot,
  setRootLimit,
  settleReport,
  shareOwn,
  sharesView,
  sharing,
  takeReport,
} from "../src/core/shares.ts";
import { CoordinatorStore } from "./storage.ts";
import { LeaseTokens } from "./tokens.ts";

/** The variables the coordinator reads; the same names as everywhere else in leasegate. */
export interface CoordinatorEnv extends PoolEnv {
  /**
   * This class's own namespace (the binding `workerPool` uses): a shard (`${pool}#i`) reports to
   * its pool's root through it. Needed only by a sharded pool's objects.
   */
  COORDINATOR_DO?: DurableObjectNamespace<ConnectionCoordinator> | undefined;
}

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
  /** What this object is, from its own name: a pool's root (`ROOT_SHARD`) or shard `i` of it; null: unnamed. */
  private identity: { pool: string; shard: string } | null = null;
  /** A pool's root: the global limit, the layout and every shard's share (`src/core/shares.ts`). */
  private root: RootState | null = null;
  /** The root's own pool: the most held + waiting since its share was last set, and when that was. */
  private ownPeak = 0;
  private ownSharedAt = 0;
  /** When the root last asked each shard to report now. */
  private readonly askedAt = new Map<string, number>();
  /** A shard: the share in force and its reports to the root. */
  private side: ShardSide | null = null;
  /** A shard: why its last report failed (null once one is answered). */
  private reportFailure: string | null = null;
  /** Callers wait for want of a share: the next look (one at a time). */
  private shareTimer: ReturnType<typeof setTimeout> | undefined;
  /** A shard: its next periodic report while the object lives (an alarm covers its eviction). */
  private reportTimer: ReturnType<typeof setTimeout> | undefined;
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
      this.identity = shardOf(this.ctx.id.name ?? this.store.readMeta("name"));
      // The last learning, worked out again with the caps of this object's env now (a deploy that
      // lowered LEASE_LIMIT_MAX applies at once, not at the next learning).
      const learned = this.store.readMeta("learned");
      const learn = learnSettingsFromEnv(this.env);
      const kept = learned === null ? null : (JSON.parse(learned) as LearnedLimit);
      this.learned = kept && learn && learnedLimit(withCaps(kept.terms, learn), kept.learnedAt);
      pool = restore(this.baseConfig(), snap, []);
      this.loadShares(pool);
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

  /** LEASE_* from env (with `LEASE_LIMIT=auto`, the learned limit once there is one). */
  private baseConfig() {
    const env = configFromEnv(this.env);
    return this.learned && learnSettingsFromEnv(this.env) ? { ...env, limit: this.learned.limit } : env;
  }

  // ── One limit shared by demand (src/core/shares.ts): the root owns it, shards report to it. ──

  /**
   * At start: a root reads its layout and the shards' accounts (their reserves stand until each
   * reports again) and its own pool takes the share it had; a shard enforces the share it kept
   * (0 on its first start) until the root answers its first report.
   */
  private loadShares(pool: PoolState): Effects | null {
    if (this.identity?.shard === ROOT_SHARD) {
      const kept = this.store.readMeta("shares");
      this.root = createRoot(pool.config.limit, this.layout(), kept === null ? null : JSON.parse(kept));
      if (sharing(this.root)) pool.share = this.root.accounts.get(ROOT_SHARD)?.share ?? 0;
    } else if (this.identity !== null) {
      const kept = this.store.readMeta("share");
      const { share, limit } =
        kept === null ? { share: 0, limit: 1 } : (JSON.parse(kept) as { share: number; limit: number });
      this.side = createShardSide(share);
      return applyShare(pool, configFromEnv(this.env), limit, share, Date.now());
    }
    return null;
  }

  /**
   * Learns this object's name where the runtime does not tell it (`ctx.id.name` unset): a caller's
   * word counts only if the id derived from it is this object's id, so no caller can make it
   * another object. Kept in meta; a shard then starts from no share, a root from its layout.
   */
  private identify(name: unknown): void {
    if (this.identity !== null || typeof name !== "string" || name === "" || name.length > 256) return;
    if (!this.env.COORDINATOR_DO?.idFromName(name).equals(this.ctx.id)) return;
    this.store.writeMeta("name", name);
    this.identity = shardOf(name);
    const fx = this.loadShares(this.requirePool());
    if (fx) void this.afterStep({ answer: null, effects: fx });
  }

  /** The root's layout: an operator's (kept in meta), else `LEASE_SHARDS` from this object's env, split by demand. */
  private layout(): Layout {
    const kept = this.store.readMeta("layout");
    if (kept !== null) return checkLayout(JSON.parse(kept) as Layout);
    return { count: intFromEnv("LEASE_SHARDS", this.env.LEASE_SHARDS, 1, 1, 1024), split: "demand" };
  }

  /**
   * After every transition: a shard notes its demand and reports when one is due (callers wait
   * with its share used up, or the periodic report); the root's own pool takes a new share at
   * once when its callers wait with its share used up. No storage and no call on this path
   * otherwise.
   */
  private shareStep(pool: PoolState): void {
    const held = pool.leases.size;
    const waiting = pool.queue.length;
    const now = Date.now();
    const short = waiting > 0 && held >= capacity(pool);
    if (this.side) {
      notePeak(this.side, held, waiting);
      if (reportDue(this.side, held, waiting, now)) void this.sendReport();
      else if (short && !this.side.inFlight) this.shareSoon(this.side.reportedAt + EAGER_REPORT_GAP_MS - now);
    } else if (this.root && sharing(this.root)) {
      if (held + waiting > this.ownPeak) this.ownPeak = held + waiting;
      if (short && now - this.ownSharedAt >= EAGER_REPORT_GAP_MS) this.shareOwn(pool);
      else if (short) this.shareSoon(this.ownSharedAt + EAGER_REPORT_GAP_MS - now);
    }
  }

  /** Callers wait for want of a share and the last report was just now: look again in `ms` (one timer at a time). */
  private shareSoon(ms: number): void {
    if (this.shareTimer !== undefined) return;
    this.shareTimer = setTimeout(
      () => {
        this.shareTimer = undefined;
        if (this.pool) this.shareStep(this.pool);
      },
      Math.max(1, ms),
    );
  }

  /** The root's own pool takes its share now (kept with the accounts before any answer leaves). */
  private shareOwn(pool: PoolState): void {
    const root = this.root!;
    const now = Date.now();
    setRootLimit(root, pool.config.limit);
    const fx = shareOwn(root, pool, this.ownPeak, now);
    this.ownPeak = pool.leases.size + pool.queue.length;
    this.ownSharedAt = now;
    this.store.writeMeta("shares", JSON.stringify(rootSnapshot(root)));
    void this.afterStep({ answer: null, effects: fx });
  }

  /**
   * A shard's report to its root, one at a time. The answer is kept (meta, before any grant it
   * allows is answered) and applied; a failed call leaves the share in force. The next report is
   * due in `REPORT_EVERY_MS` while the shard has a share, leases or callers (an alarm, so an
   * evicted shard still gives its share back).
   */
  private async sendReport(): Promise<void> {
    const side = this.side!;
    const pool = this.requirePool();
    const sent = takeReport(side, this.identity!.shard, pool.leases.size, pool.queue.length, Date.now());
    let answer: ShareAnswer;
    try {
      const ns = this.env.COORDINATOR_DO;
      if (!ns) {
        throw new LeaseError(
          "INVALID_CONFIG",
          "A shard reaches its pool's root through the `COORDINATOR_DO` binding (this class's own namespace)",
        );
      }
      answer = await ns.getByName(this.identity!.pool).shareReport(sent, this.identity!.pool);
    } catch (error) {
      answer = failureOf(error);
    }
    if (answer.ok) {
      this.store.writeMeta("share", JSON.stringify({ share: answer.share, limit: answer.limit }));
      settleReport(side, answer.share);
      this.reportFailure = null;
      void this.afterStep({
        answer: null,
        effects: applyShare(pool, configFromEnv(this.env), answer.limit, answer.share, Date.now()),
      });
    } else {
      settleReport(side, null);
      this.reportFailure = `${answer.code}: ${answer.message}`;
    }
    const idle = pool.leases.size === 0 && pool.queue.length === 0 && side.peak === 0;
    if (idle && side.enforced === 0) return;
    // The next report: a timer while the object lives, and an alarm in case it is evicted first.
    const inMs = idle ? IDLE_REPORT_EVERY_MS : REPORT_EVERY_MS;
    clearTimeout(this.reportTimer);
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined;
      if (this.side && !this.side.inFlight) void this.sendReport();
    }, inMs);
    await this.ctx.storage.setAlarm(Date.now() + inMs + REPORT_EVERY_MS).catch(() => {});
  }

  /**
   * The root: a shard's report (see `src/core/shares.ts`). Answers the shard's share of the
   * global limit; the accounts are kept (the output gate holds the answer until they are durable),
   * so a restarted root still counts every share it gave. Not an application's call.
   *
   * @example
   * const answer = await env.COORDINATOR_DO.getByName("main").shareReport({ shard: "0", enforced: 2, held: 2, peak: 5 });
   */
  async shareReport(r: ShareReport, name?: string): Promise<ShareAnswer> {
    try {
      this.identify(name);
      if (!this.root) {
        throw new LeaseError(
          "INVALID_ARGUMENT",
          "Only a pool's root object (named after the pool) takes shard reports",
        );
      }
      const pool = this.requirePool();
      const root = this.root;
      setRootLimit(root, pool.config.limit);
      const { share, effects, ask } = report(root, pool, this.ownPeak, r, Date.now());
      this.ownPeak = pool.leases.size + pool.queue.length;
      this.ownSharedAt = Date.now();
      this.store.writeMeta("shares", JSON.stringify(rootSnapshot(root)));
      void this.afterStep({ answer: null, effects });
      this.askReports(ask);
      return { ok: true, share, limit: root.limit };
    } catch (error) {
      return failureOf(error);
    }
  }

  /** The root asks shards above their target to report now (at most once per `EAGER_REPORT_GAP_MS` each). */
  private askReports(keys: readonly string[]): void {
    const ns = this.env.COORDINATOR_DO;
    if (!ns || !this.identity || keys.length === 0) return;
    const now = Date.now();
    for (const key of keys) {
      if (now - (this.askedAt.get(key) ?? 0) < EAGER_REPORT_GAP_MS) continue;
      this.askedAt.set(key, now);
      // Not awaited and never failing the report: the shard's periodic report is the fallback.
      ns.getByName(`${this.identity.pool}#${key}`)
        .reportNow()
        .catch(() => {});
    }
  }

  /**
   * A shard: its root needs slots back, so it reports now (if none is in flight and the last was
   * more than `EAGER_REPORT_GAP_MS` ago). Not an application's call.
   *
   * @example
   * await env.COORDINATOR_DO.getByName("main#2").reportNow();
   */
  async reportNow(): Promise<void> {
    const side = this.side;
    if (!side || side.inFlight || Date.now() - side.reportedAt < EAGER_REPORT_GAP_MS) return;
    await this.sendReport();
  }

  /**
   * An operator's layout for a sharded pool (on its root): how many shard objects (`${pool}#i`)
   * it plans for and how it splits the limit (`demand` or `even`); `null` returns to
   * `LEASE_SHARDS` split by demand. Kept across restarts. A change revokes nothing: a shard's
   * share shrinks only as it gives slots back, and grows only into what the others returned.
   *
   * `name`: the name the object was reached by, for a runtime that does not tell an object its own.
   *
   * @example
   * await stub.setLayout({ count: 4, split: "demand" }, "main");
   */
  async setLayout(layout: Layout | null, name?: string): Promise<LayoutResult> {
    try {
      this.identify(name);
      if (!this.root) {
        throw new LeaseError("INVALID_ARGUMENT", "A layout is set on a pool's root object (named after the pool)");
      }
      const next = layout === null ? null : checkLayout(layout);
      this.store.writeMeta("layout", next === null ? null : JSON.stringify(next));
      this.root.layout = this.layout();
      return { ok: true, layout: this.root.layout };
    } catch (error) {
      return failureOf(error);
    }
  }

  /** Stats with the share this object enforces (a shard) or every shard's (the root). */
  private withShares(s: PoolStats, pool: PoolState): PoolStats {
    const now = Date.now();
    if (this.side)
      return { ...s, share: { share: this.side.enforced, peak: this.side.peak, failure: this.reportFailure } };
    if (!this.root) return s;
    const shared = sharing(this.root);
    if (!shared && this.root.layout.count === 1) return s;
    setRootLimit(this.root, pool.config.limit);
    return {
      ...s,
      ...(shared ? { share: { share: pool.share ?? pool.config.limit, peak: this.ownPeak, failure: null } } : {}),
      shares: { limit: this.root.limit, layout: this.root.layout, shards: sharesView(this.root, now) },
    };
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
    this.shareStep(pool);
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
    // A shard's periodic report when its timer did not run (the object was evicted meanwhile).
    if (this.side && !this.side.inFlight && Date.now() - this.side.reportedAt >= REPORT_EVERY_MS)
      await this.sendReport();
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
    if (typeof options === "object" && options !== null) this.identify(options.object);
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
  async stats(): Promise<PoolStats> {
    const pool = this.requirePool();
    return this.withShares(stats(pool, Date.now()), pool);
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
      if (this.side) {
        throw new LeaseError(
          "INVALID_ARGUMENT",
          "A shard's limit is its share of the pool's limit: set the limit on the pool's root object",
        );
      }
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
  async operatorStats(): Promise<OperatorStats> {
    const pool = this.requirePool();
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
      ...this.withShares(stats(pool, Date.now()), pool),
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
    // A sharded pool's limit is learned by its root alone.
    if (this.side) return false;
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
      if (this.side) throw new LeaseError("INVALID_ARGUMENT", "A sharded pool's limit is learned by its root object");
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
