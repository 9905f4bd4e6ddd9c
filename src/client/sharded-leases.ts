import {
  type AcquireOptions,
  type AcquireResult,
  type Counters,
  type LeaseGrant,
  type PoolStats,
  type ReleaseResult,
  type RenewResult,
  type ShardLoad,
  DEFAULT_BLOCK_IDLE_MS,
  LeaseError,
  checkInt,
  isLeaseError,
  leaseRef,
  percentile,
  pickShard,
} from "../core/index.ts";
import {
  type BlockEffect,
  type BlockState,
  abandon,
  createBlock,
  finished,
  granted,
  holds,
  nextReapAt,
  observe,
  reap,
  refused,
  renewed,
  request,
} from "../core/lease-block.ts";
import type { LeaseTracer } from "../tracing.ts";
import { validFor } from "./heartbeat.ts";
import type { ClientAcquireOptions } from "./hold.ts";
import { type LocalShed, localShedOf } from "./local-shed.ts";
import {
  type Coordinator,
  type LeaseClient,
  type WaitUntil,
  claimNow,
  claimWindow,
  coordinatorRequest,
  untilAborted,
} from "./leases.ts";

/** A lease from a sharded pool: it remembers its shard, so release and renew go to that object. */
export interface ShardedGrant extends LeaseGrant {
  readonly shard: number;
  /** A lease from the isolate's block: which hand-on this is. Its release must present it (renewals keep it). */
  readonly generation?: number | undefined;
}

interface LocalWaiter {
  /** When the request called `acquire` (the clock of the block's effects). */
  since: number;
  resolve(lease: ShardedGrant): void;
  reject(error: unknown): void;
  timer: ReturnType<typeof setTimeout> | undefined;
  options: AcquireOptions;
}

/**
 * What one isolate keeps for one sharded pool, across requests (module scope in a Worker): the
 * load each shard last reported, and the lease block when batching is on. Holds no I/O objects —
 * on Workers a stub belongs to the request that made it — so every call brings its own.
 */
export interface IsolateShards {
  readonly count: number;
  readonly loads: ShardLoad[];
  /** Until when (local clock) a shard that could not be reached is left out of the choice. */
  readonly downUntil: number[];
  readonly block: BlockState<ShardedGrant> | undefined;
  /** Requests waiting in the block, by id: how to answer them. */
  readonly waiters: Map<string, LocalWaiter>;
  seq: number;
}

export interface IsolateShardsOptions {
  /** Coordinator objects the pool's limit is split across (`LEASE_SHARDS`). At most the limit. */
  shards: number;
  /** The pool's global limit (`LEASE_LIMIT`), when fixed: the shards may not outnumber it. */
  limit?: number | undefined;
  /** Most leases this isolate holds or asks for at once (`LEASE_BLOCK`); 0 = no batching. */
  maxBlock?: number | undefined;
  /** How long a block lease may idle before it goes back, ms (`LEASE_BLOCK_IDLE_MS`). */
  idleMs?: number | undefined;
  /**
   * Whether a finished block lease goes back while callers wait at the coordinator, so its FIFO
   * order holds across isolates (default `true`). `false`: for side-by-side comparisons only.
   */
  yieldToQueue?: boolean | undefined;
}

/**
 * One isolate's state for a sharded pool. Validates the shard count against the limit and the
 * block bounds (`INVALID_CONFIG`).
 *
 * @example
 * const kept = createIsolateShards({ shards: 4, limit: 40, maxBlock: 4, idleMs: 20 }); // module scope
 */
export function createIsolateShards(options: IsolateShardsOptions): IsolateShards {
  const limit =
    options.limit === undefined
      ? 1024
      : checkInt("LEASE_LIMIT", options.limit, 1, Number.MAX_SAFE_INTEGER, "INVALID_CONFIG");
  const count = checkInt("LEASE_SHARDS", options.shards, 1, Math.min(1024, limit), "INVALID_CONFIG");
  const maxBlock = checkInt("LEASE_BLOCK", options.maxBlock ?? 0, 0, 1000, "INVALID_CONFIG");
  const idleMs = checkInt("LEASE_BLOCK_IDLE_MS", options.idleMs ?? DEFAULT_BLOCK_IDLE_MS, 0, 60_000, "INVALID_CONFIG");
  // Until a shard answers, assume an empty one with its even share.
  const loads = Array.from({ length: count }, () => ({ held: 0, waiting: 0, limit: 1 }));
  const block =
    maxBlock === 0
      ? undefined
      : createBlock<ShardedGrant>({ maxBlock, idleMs, yieldToQueue: options.yieldToQueue !== false });
  return {
    count,
    loads,
    downUntil: new Array<number>(count).fill(0),
    block,
    waiters: new Map(),
    seq: 0,
  };
}

export { DEFAULT_BLOCK_IDLE_MS };

/**
 * How long an unreachable shard is left out of the choice before it is tried again, ms.
 *
 * @example
 * await sleep(SHARD_RETRY_AFTER_MS); // then the isolate tries the shard again
 */
export const SHARD_RETRY_AFTER_MS = 1000;
const UNREACHABLE: ShardLoad = { held: 0, waiting: 0, limit: 0 };

export interface ShardedLeasesOptions {
  /** The shard objects, index i = `${pool}#${i}` (this request's stubs). Length = the isolate's count. */
  coordinators: readonly Coordinator[];
  /** The isolate's state for this pool, from `createIsolateShards`, kept at module scope. */
  isolate: IsolateShards;
  holder?: string | undefined;
  /** The pool's default wait (`LEASE_WAIT_MS`): the local deadline of block waiters that name none. */
  waitMs: number;
  /** Keeps this request alive for acquires and releases it sends for the block (`ctx.waitUntil`). */
  waitUntil?: WaitUntil | undefined;
  /**
   * A new stub for shard i. A stub does not outlive its object's restart; with this, a release
   * that found its stub broken is sent once more on a new one, instead of the slot waiting for
   * its TTL (idle block leases are released in the background, often on an older stub).
   */
  reconnect?: ((index: number) => Coordinator) | undefined;
  /**
   * The pool's root object (named after the pool), when it is not one of `coordinators`: its stats
   * carry the global limit and every shard's share and demand.
   */
  root?: Coordinator | undefined;
  /** Shard choice randomness; `Math.random` by default. */
  random?: (() => number) | undefined;
  /** The pool's name, for `NESTED_LEASE` (see `LeasesOptions.pool`). */
  pool?: string | undefined;
  /** The claim window of a grant from a shard's queue, ms, as `LeasesOptions.claimMs`. Default 500; `0` = none. */
  claimMs?: number | undefined;
  /** Spans of each lease's wait and hold, as `LeasesOptions.tracer` (with the lease's shard). */
  tracer?: LeaseTracer | undefined;
  /** Acquires refused in the isolate while the shards refuse most of them, as `LeasesOptions.localShed`. */
  localShed?: boolean | number | undefined;
}

function unavailable(cause: unknown): LeaseError {
  return new LeaseError("COORDINATOR_UNAVAILABLE", "The lease coordinator could not be reached", {
    cause,
    retryAfterMs: 100,
  });
}

function toError(result: Exclude<AcquireResult, { ok: true }>): LeaseError {
  return new LeaseError(result.code, result.message, { retryAfterMs: result.retryAfterMs });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Leases from a pool split across N coordinator objects, with optional per-isolate batching.
 *
 * Each shard enforces the share of the limit its pool's root gives it by demand
 * (`src/core/shares.ts`), so the sum of held leases across shards never exceeds the global limit;
 * the client only picks a shard, by power of two choices on the load the shards last reported,
 * and names the object it calls (`pool`), for a runtime that does not tell an object its name. With a block
 * (`maxBlock` > 0), a finished lease stays in the isolate for `idleMs` and serves the next local
 * request without a round trip; idle ones go back in the background (the TTL covers isolate death).
 *
 * @example
 * const kept = createIsolateShards({ shards: 4 }); // module scope
 * const leases = new ShardedLeases({ coordinators: names.map((n) => ns.getByName(n)), isolate: kept, waitMs: 5000, pool: "main" });
 * const lease = await leases.acquire(); try { work(); } finally { await leases.release(lease); }
 */
export class ShardedLeases implements LeaseClient {
  readonly pool: string | undefined;
  readonly #o: ShardedLeasesOptions;
  readonly #coordinators: Coordinator[];
  readonly claimMs: number | undefined;
  readonly tracer: LeaseTracer | undefined;
  readonly #shed: LocalShed | undefined;

  constructor(options: ShardedLeasesOptions) {
    if (options.coordinators.length !== options.isolate.count) {
      throw new LeaseError(
        "INVALID_CONFIG",
        `Expected ${options.isolate.count} coordinators, got ${options.coordinators.length}`,
      );
    }
    this.#o = options;
    this.#coordinators = [...options.coordinators];
    this.claimMs = claimWindow(options.claimMs);
    this.pool = options.pool;
    this.tracer = options.tracer;
    this.#shed = localShedOf(options.pool, options.localShed);
  }

  #pick(): number {
    const n = this.#o.isolate.count;
    const random = this.#o.random ?? Math.random;
    // Two distinct shards (when there are two): a draw of the same full shard twice would waste the choice.
    const a = Math.floor(random() * n);
    const b = n === 1 ? a : (a + 1 + Math.floor(random() * (n - 1))) % n;
    const { loads, downUntil } = this.#o.isolate;
    const now = Date.now();
    // A shard that just failed to answer counts as one without slots, so the other choice wins.
    const seen = (i: number) => ((downUntil[i] ?? 0) > now ? UNREACHABLE : loads[i]!);
    return pickShard([seen(a), seen(b)], 0, 1) === 0 ? a : b;
  }

  /**
   * One acquire on one shard; records the load it answers with. Throws `LeaseError`s. `carried`: a
   * lease of that shard whose release rides on the call (it goes first); if the call fails, it is
   * released on its own.
   */
  async #acquireOn(
    shard: number,
    options: AcquireOptions,
    claim: "now" | "later" = "now",
    carried?: ShardedGrant,
  ): Promise<ShardedGrant> {
    const { isolate } = this.#o;
    const asked = coordinatorRequest(options, this.#o.holder ?? "", this.claimMs);
    const refusal = this.#shed?.refuse(asked);
    if (refusal) {
      if (carried !== undefined) this.#background(this.#releaseOn(carried).catch(() => {}));
      throw refusal;
    }
    let result: AcquireResult;
    try {
      const request = carried === undefined ? asked : { ...asked, release: [leaseRef(carried)] };
      // The object's name, for a runtime that does not tell an object its own (it checks it against its id).
      const pool = this.#o.pool;
      const object = pool === undefined || isolate.count === 1 ? undefined : shardName(pool, shard, isolate.count);
      result = await this.#coordinators[shard]!.acquire(object === undefined ? request : { ...request, object });
    } catch (error) {
      isolate.downUntil[shard] = Date.now() + SHARD_RETRY_AFTER_MS;
      if (carried !== undefined) this.#background(this.#releaseOn(carried).catch(() => {}));
      throw isLeaseError(error) ? error : unavailable(error);
    }
    isolate.downUntil[shard] = 0;
    if (result.load) isolate.loads[shard] = result.load;
    this.#shed?.answered(asked, result);
    if (!result.ok) throw toError(result);
    // A grant from the shard's queue is claimed here, before the block uses it (or by its holder's heartbeat).
    const lease: ShardedGrant = { ...result.lease, shard };
    if (claim === "later") return lease;
    return await claimNow(lease, this.claimMs, (l) => this.renew(l, options.ttlMs));
  }

  /**
   * Waits for a slot on the picked shard (or from the isolate's block); throws `QUEUE_FULL`,
   * `ACQUIRE_TIMEOUT` or `COORDINATOR_UNAVAILABLE`.
   *
   * @example
   * const lease = await leases.acquire({ waitMs: 2000 });
   */
  async acquire(options: ClientAcquireOptions = {}, claim: "now" | "later" = "now"): Promise<ShardedGrant> {
    const { signal, ...asked } = options;
    signal?.throwIfAborted();
    const { isolate } = this.#o;
    const block = isolate.block;
    if (!block) {
      const sent = this.#acquireOn(this.#pick(), asked, claim);
      // A slot granted after the caller gave up goes straight back.
      return signal
        ? untilAborted(sent, signal, (late) => this.#background(this.#releaseOn(late).catch(() => {})))
        : sent;
    }
    const id = `local-${++isolate.seq}`;
    const waitMs = asked.waitMs ?? this.#o.waitMs;
    const now = Date.now();
    const done = new Promise<ShardedGrant>((resolve, reject) => {
      isolate.waiters.set(id, { since: now, resolve, reject, timer: undefined, options: asked });
    });
    if (signal) {
      // Given up: the local waiter leaves the block's queue; a lease coming for it serves the next one.
      const onAbort = () => abandon(block, id) && this.#fail(id, signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      void done.then(
        () => signal.removeEventListener("abort", onAbort),
        () => signal.removeEventListener("abort", onAbort),
      );
    }
    this.#perform(request(block, id, now, now + waitMs));
    this.#wake(id, now + waitMs);
    return done;
  }

  /**
   * A local waiter's timer: the block is reaped when its next lifetime ends (a vanished holder's
   * lease, an unanswered acquire) and at the waiter's deadline, so the waiter gets the room freed,
   * or its `ACQUIRE_TIMEOUT` by its deadline, even if no other call comes.
   */
  #wake(id: string, deadline: number): void {
    const { isolate } = this.#o;
    const w = isolate.waiters.get(id);
    if (!w) return;
    const at = Math.min(deadline, nextReapAt(isolate.block!) ?? deadline);
    w.timer = setTimeout(
      () => {
        this.#perform(reap(isolate.block!, Date.now()));
        this.#wake(id, deadline);
      },
      Math.max(0, at - Date.now()),
    );
  }

  #fail(id: string, error: unknown): void {
    const w = this.#o.isolate.waiters.get(id);
    if (!w) return;
    this.#o.isolate.waiters.delete(id);
    clearTimeout(w.timer);
    w.reject(error);
  }

  /**
   * Performs the block's effects; `refusal` is the error of the acquire a `refused` call answers.
   * `carry`: a lease going back whose release rides on acquire `ask` (one call, not two); its
   * `sent` is set to that acquire's end.
   */
  #perform(
    effects: BlockEffect<ShardedGrant>[],
    refusal?: LeaseError,
    carry?: { ask: number; lease: ShardedGrant; sent?: Promise<void> },
  ): void {
    const { isolate } = this.#o;
    const block = isolate.block!;
    for (const fx of effects) {
      if (fx.kind === "start") {
        const w = isolate.waiters.get(fx.request);
        if (w) {
          isolate.waiters.delete(fx.request);
          clearTimeout(w.timer);
          // Valid until its end counted from the request's own call, as a holder counts (`validForMs`:
          // from when the call was taken up, its wait in the block included); released by its generation.
          w.resolve({ ...fx.lease, validForMs: Math.max(0, fx.endsAt - w.since), generation: fx.generation });
        }
      } else if (fx.kind === "release") {
        this.#background(this.#releaseOn(fx.lease).catch(() => {}));
      } else if (fx.kind === "fail") {
        const waitMs = isolate.waiters.get(fx.request)?.options.waitMs ?? this.#o.waitMs;
        const timeout = () =>
          new LeaseError("ACQUIRE_TIMEOUT", `No slot within ${waitMs} ms (isolate block)`, { retryAfterMs: 100 });
        this.#fail(fx.request, fx.reason === "refused" && refusal ? refusal : timeout());
      } else {
        // The acquire carries the options and deadline of the waiter it was sent for.
        const options = isolate.waiters.get(fx.request)?.options;
        const sentAt = Date.now();
        const rides = carry?.ask === fx.ask ? carry.lease : undefined;
        const shard = rides === undefined ? this.#pick() : rides.shard;
        const asked = { ...options, waitMs: Math.max(0, fx.deadline - sentAt) };
        const sent = this.#acquireOn(shard, asked, "now", rides).then(
          (lease) => {
            const now = Date.now();
            // Handed on only while young: a reused lease keeps three quarters of its TTL.
            const life = {
              endsAt: sentAt + validFor(lease),
              reuseUntil: now + (lease.expiresAt - lease.grantedAt) / 4,
            };
            this.#perform(granted(block, fx.ask, lease, life, now));
            this.#observe(lease.shard, sentAt);
            this.#sweepLater();
          },
          (error: unknown) => {
            const err = isLeaseError(error) ? error : unavailable(error);
            // ACQUIRE_TIMEOUT: the coordinator's wait ran out; a waiter with time left asks again.
            this.#perform(refused(block, fx.ask, Date.now(), err.code === "ACQUIRE_TIMEOUT"), err);
          },
        );
        this.#background(sent);
        if (carry !== undefined && rides !== undefined) carry.sent = sent;
      }
    }
  }

  /**
   * The queue of the shard that just granted the acquire sent at `sentAt`: while others wait there,
   * block leases go back. An empty one lets the block serve the local requests older than `sentAt`
   * — with one coordinator only: one shard's empty queue says nothing of the queue of another,
   * whose lease the block may hand on.
   */
  #observe(shard: number, sentAt: number): void {
    const { isolate } = this.#o;
    const asked = isolate.count === 1 ? sentAt : Number.NEGATIVE_INFINITY;
    this.#perform(observe(isolate.block!, isolate.loads[shard]?.waiting ?? 0, Date.now(), asked));
  }

  #background(p: Promise<unknown>): void {
    if (this.#o.waitUntil) this.#o.waitUntil(p);
  }

  /** Releases the block's idle leases once they have idled `idleMs`, in this request's background. */
  #sweepLater(): void {
    const block = this.#o.isolate.block!;
    if (block.idle.length === 0) return;
    this.#background(sleep(block.config.idleMs + 1).then(() => this.#perform(reap(block, Date.now()))));
  }

  async #releaseOn(lease: LeaseGrant): Promise<void> {
    const shard = (lease as Partial<ShardedGrant>).shard ?? 0;
    const ref = leaseRef(lease);
    let result: ReleaseResult;
    try {
      result = await this.#coordinators[shard]!.release(ref);
    } catch (error) {
      if (!this.#o.reconnect) throw isLeaseError(error) ? error : unavailable(error);
      // The object restarted under this stub (or the call was lost): once more on a new stub.
      // A release is safe to repeat: a second one fails with a code and frees nothing.
      this.#coordinators[shard] = this.#o.reconnect(shard);
      try {
        result = await this.#coordinators[shard]!.release(ref);
      } catch (again) {
        throw isLeaseError(again) ? again : unavailable(again);
      }
    }
    if (!result.ok) throw new LeaseError(result.code, result.message, { retryAfterMs: result.retryAfterMs });
  }

  /**
   * Gives the slot back: to the isolate's block (the next local request gets it) or to its shard.
   * A block lease is handed on only while young (a quarter of its TTL), so a reused lease always
   * has most of its TTL left. Only the current holder's release counts: a repeated or late one
   * fails with `LEASE_NOT_FOUND` and frees nothing.
   *
   * @example
   * await leases.release(lease);
   */
  async release(lease: LeaseGrant): Promise<void> {
    const block = this.#o.isolate.block;
    const generation = (lease as Partial<ShardedGrant>).generation;
    if (!block || (generation === undefined && !holds(block, (l) => l.id === lease.id))) return this.#releaseOn(lease);
    const effects = generation === undefined ? null : finished(block, generation, Date.now());
    if (!effects) throw new LeaseError("LEASE_NOT_FOUND", "This lease was already given back");
    // Its own release, when it goes back, is this call's answer. With one coordinator, a lease going
    // back while a local request waits rides on the acquire sent for that request: one call, not two
    // (the slot it frees goes to whoever waits there first, that request's acquire included). This
    // call then ends with that acquire: only with `waitUntil`, where nobody waits on it.
    const own = effects.find((fx) => fx.kind === "release" && fx.lease.id === lease.id);
    const carries = this.#o.isolate.count === 1 && this.#o.waitUntil !== undefined;
    const ask = own && carries ? effects.find((fx) => fx.kind === "acquire") : undefined;
    const carry: { ask: number; lease: ShardedGrant; sent?: Promise<void> } | undefined =
      own?.kind === "release" && ask?.kind === "acquire" ? { ask: ask.ask, lease: own.lease } : undefined;
    this.#perform(
      effects.filter((fx) => fx !== own),
      undefined,
      carry,
    );
    this.#sweepLater();
    if (carry?.sent) return carry.sent;
    if (own?.kind === "release") return this.#releaseOn(own.lease);
  }

  /**
   * Extends the lease on its shard; the renewed lease keeps its shard.
   *
   * @example
   * lease = await leases.renew(lease, 30_000);
   */
  async renew(lease: LeaseGrant, ttlMs?: number): Promise<ShardedGrant> {
    const { shard = 0, generation } = lease as Partial<ShardedGrant>;
    const sentAt = Date.now();
    let result: RenewResult;
    try {
      result = await this.#coordinators[shard]!.renew(leaseRef(lease), ttlMs);
    } catch (error) {
      throw isLeaseError(error) ? error : unavailable(error);
    }
    if (!result.ok) throw new LeaseError(result.code, result.message, { retryAfterMs: result.retryAfterMs });
    const block = this.#o.isolate.block;
    const fresh: ShardedGrant = { ...result.lease, shard };
    if (!block || generation === undefined) return fresh;
    // A block lease's holder keeps it alive: the block keeps the renewed lease and its new end.
    this.#perform(renewed(block, generation, fresh, sentAt + validFor(result.lease, ttlMs), Date.now()));
    return { ...fresh, generation };
  }

  /**
   * The pool's state summed over its shards (`mergeStats`); `shards` has each one's own.
   *
   * @example
   * const { held, limit, shards } = await leases.stats();
   */
  async stats(): Promise<PoolStats & { shards: PoolStats[] }> {
    let all: PoolStats[];
    try {
      const root = this.#o.root;
      all = await Promise.all([...this.#coordinators, ...(root ? [root] : [])].map((c) => c.stats()));
    } catch (error) {
      throw isLeaseError(error) ? error : unavailable(error);
    }
    return { ...mergeStats(all), shards: all };
  }
}

/**
 * One snapshot for a sharded pool, every field merged on purpose: the limit is the root's global
 * one (else the shards' limits summed), counts and counters summed, the oldest wait and the
 * longest deadline and TTL the largest, percentiles read from the summed histograms, paused or
 * recovering where any shard is, and the root's shares as they are.
 *
 * @example
 * mergeStats(await Promise.all(stubs.map((s) => s.stats()))).held
 */
export function mergeStats(list: readonly PoolStats[]): PoolStats {
  const first = list[0]!;
  const sum = (f: (s: PoolStats) => number) => list.reduce((a, s) => a + f(s), 0);
  const most = (f: (s: PoolStats) => number) => Math.max(...list.map(f));
  const counters = {} as Counters;
  for (const k of Object.keys(first.counters) as Array<keyof Counters>) counters[k] = sum((s) => s.counters[k]);
  const counts = first.waitHistogram.counts.map((_, i) => sum((s) => s.waitHistogram.counts[i] ?? 0));
  const hist = {
    bounds: first.waitHistogram.bounds,
    counts,
    count: sum((s) => s.waitTimeMs.count),
    sum: sum((s) => s.waitTimeMs.sum),
    max: most((s) => s.waitTimeMs.max),
  };
  const shares = list.find((s) => s.shares !== undefined)?.shares;
  const recovering = list.filter((s) => s.recovery !== null);
  const shared = list.filter((s) => s.share !== undefined);
  // Every field of PoolStats is named here: a new one is a compile error until it is merged.
  const merged: { [K in keyof Required<PoolStats>]: PoolStats[K] } = {
    limit: shares?.limit ?? sum((s) => s.limit),
    effectiveLimit: sum((s) => s.effectiveLimit),
    reserved: sum((s) => s.reserved),
    held: sum((s) => s.held),
    waiting: sum((s) => s.waiting),
    maxWaitMs: most((s) => s.maxWaitMs),
    maxQueue: sum((s) => s.maxQueue),
    waitMs: most((s) => s.waitMs),
    leaseTtlMs: most((s) => s.leaseTtlMs),
    counters,
    waitTimeMs: {
      p50: percentile(hist, 0.5),
      p90: percentile(hist, 0.9),
      p99: percentile(hist, 0.99),
      max: hist.max,
      count: hist.count,
      sum: hist.sum,
    },
    waitHistogram: { bounds: hist.bounds, counts },
    leases: list.flatMap((s) => s.leases),
    paused: list.some((s) => s.paused),
    // The mode is the pool's; newest-first is in force where any shard has a standing queue.
    queue: { mode: first.queue.mode, lifo: list.some((s) => s.queue?.lifo === true) },
    recovery:
      recovering.length === 0
        ? null
        : {
            endsInMs: Math.max(...recovering.map((s) => s.recovery!.endsInMs)),
            recovered: recovering.reduce((a, s) => a + s.recovery!.recovered, 0),
          },
    share:
      shared.length === 0
        ? undefined
        : {
            share: shared.reduce((a, s) => a + s.share!.share, 0),
            peak: shared.reduce((a, s) => a + s.share!.peak, 0),
            failure: shared.map((s) => s.share!.failure).find((f) => f !== null) ?? null,
          },
    shares,
    prediction: mergePredictions(list),
  };
  return merged;
}

/** The shards' wait predictions as one: counts summed, means weighted by each shard's waits. */
function mergePredictions(list: readonly PoolStats[]): PoolStats["prediction"] {
  const all = list.flatMap((s) => (s.prediction ? [s.prediction] : []));
  if (all.length === 0) return undefined;
  const waits = all.reduce((a, p) => a + p.waits, 0);
  const mean = (f: (p: NonNullable<PoolStats["prediction"]>) => number) =>
    waits === 0 ? 0 : all.reduce((a, p) => a + f(p) * p.waits, 0) / waits;
  return {
    shed: all.reduce((a, p) => a + p.shed, 0),
    waits,
    meanPredictedMs: mean((p) => p.meanPredictedMs),
    meanActualMs: mean((p) => p.meanActualMs),
    meanAbsErrorMs: mean((p) => p.meanAbsErrorMs),
    early: all.reduce((a, p) => a + p.early, 0),
    earlyShare: mean((p) => p.earlyShare),
    holdMs: mean((p) => p.holdMs),
    shedding: all.some((p) => p.shedding),
  };
}

/**
 * The object name of shard `index` of `count` for `pool`: the pool's own name when unsharded
 * (today's object), else `${pool}#${index}`.
 *
 * @example
 * shardName("main", 2, 4) // "main#2"
 */
export function shardName(pool: string, index: number, count: number): string {
  return count === 1 ? pool : `${pool}#${index}`;
}
