/**
 * Lease batching inside one isolate: the isolate keeps the leases it was granted for a short idle
 * time and hands them to its own next requests without a round trip, returning them when idle.
 *
 * Pure: the shell feeds events (a request arrives, a grant arrives, work finishes, time passes)
 * and performs the returned effects (send an acquire, send a release, start work with a lease).
 * Bounded: at most `maxBlock` leases held or requested per isolate, and a lease idle for
 * `idleMs` goes back, so a quiet isolate cannot sit on slots a busy one needs.
 *
 * Global order: the coordinator's queue is FIFO across isolates, and a block must not jump it. A
 * lease is handed on inside the isolate only while the coordinator last said nobody else waits
 * there (`observe`, fed from the load its answers carry); while someone does, a finished or idle
 * block lease goes back, so the longest-waiting caller anywhere is next. A busy block may not hear
 * from the coordinator for long (it needs no calls): once its last report is `staleAfterMs` old,
 * the next finished lease goes back and an acquire asks again, so a caller waiting elsewhere is
 * seen within about that time and one round trip.
 */
export interface BlockConfig {
  /** Most leases this isolate may hold or have requested at once. */
  maxBlock: number;
  /** How long a lease may sit unused before it is released, ms. */
  idleMs: number;
  /**
   * Whether finished leases go back while callers wait at the coordinator (the default, `true`).
   * `false` keeps them in the isolate while young, whoever waits: for side-by-side comparisons only.
   */
  yieldToQueue?: boolean | undefined;
  /** How long the coordinator's report that nobody waits there is trusted, ms (default 50). */
  staleAfterMs?: number | undefined;
}

/**
 * How long a report of an empty coordinator queue is trusted by default, ms.
 *
 * @example
 * createBlock<Lease>({ maxBlock: 4, idleMs: 20, staleAfterMs: DEFAULT_STALE_AFTER_MS });
 */
export const DEFAULT_STALE_AFTER_MS = 50;

export interface BlockState<L> {
  config: BlockConfig;
  idle: Array<{ lease: L; since: number }>;
  inUse: number;
  inFlight: number;
  /** Local requests waiting for a lease, in arrival order. */
  waiting: string[];
  /** Callers of other isolates waiting at the coordinator, as it last reported (`observe`). */
  queuedElsewhere: number;
  /** When that report came (the shell's clock); -Infinity before the first. */
  observedAt: number;
  /** When a stale report last sent a lease back to ask again. */
  askedAt: number;
}

export type BlockEffect<L> =
  | { kind: "acquire" }
  | { kind: "release"; lease: L }
  | { kind: "start"; request: string; lease: L };

/**
 * An isolate's empty block.
 *
 * @example
 * const block = createBlock<Lease>({ maxBlock: 4, idleMs: 5 });
 */
export function createBlock<L>(config: BlockConfig): BlockState<L> {
  return {
    config,
    idle: [],
    inUse: 0,
    inFlight: 0,
    waiting: [],
    queuedElsewhere: 0,
    observedAt: Number.NEGATIVE_INFINITY,
    askedAt: Number.NEGATIVE_INFINITY,
  };
}

function held<L>(s: BlockState<L>): number {
  return s.idle.length + s.inUse + s.inFlight;
}

/**
 * A local request wants a lease: served from the idle block at once, else queued locally, with
 * an acquire sent when the block has room for one more.
 *
 * @example
 * for (const fx of request(block, "req-1", now)) perform(fx);
 */
export function request<L>(s: BlockState<L>, id: string, now: number): BlockEffect<L>[] {
  void now;
  const free = s.idle.pop();
  if (free) {
    s.inUse++;
    return [{ kind: "start", request: id, lease: free.lease }];
  }
  s.waiting.push(id);
  return cover(s);
}

function yields<L>(s: BlockState<L>): boolean {
  return s.queuedElsewhere > 0 && s.config.yieldToQueue !== false;
}

/** One acquire for a local waiter no acquire in flight covers, within the block bound. */
function cover<L>(s: BlockState<L>): BlockEffect<L>[] {
  if (s.inFlight < s.waiting.length && held(s) < s.config.maxBlock) {
    s.inFlight++;
    return [{ kind: "acquire" }];
  }
  return [];
}

function place<L>(s: BlockState<L>, lease: L, now: number): BlockEffect<L>[] {
  const next = s.waiting.shift();
  if (next !== undefined) {
    s.inUse++;
    return [{ kind: "start", request: next, lease }];
  }
  if (yields(s)) return [{ kind: "release", lease }];
  s.idle.push({ lease, since: now });
  return [];
}

/**
 * The coordinator granted a lease this isolate asked for.
 *
 * @example
 * granted(block, lease, now)
 */
export function granted<L>(s: BlockState<L>, lease: L, now: number): BlockEffect<L>[] {
  s.inFlight--;
  return place(s, lease, now);
}

/**
 * An acquire this isolate sent failed (timeout, shed): the oldest local waiter fails with it.
 *
 * @example
 * const failedRequest = refused(block);
 */
export function refused<L>(s: BlockState<L>): string | undefined {
  s.inFlight--;
  // Only fail a waiter that no other in-flight acquire will cover.
  return s.waiting.length > s.inFlight ? s.waiting.shift() : undefined;
}

/**
 * A request finished with its lease: the lease goes straight to the next local waiter, or idles —
 * unless callers wait at the coordinator: then it goes back, and the local waiters queue there too
 * (an acquire for each one no acquire in flight covers).
 *
 * @example
 * for (const fx of finished(block, lease, now)) perform(fx);
 */
export function finished<L>(s: BlockState<L>, lease: L, now: number): BlockEffect<L>[] {
  s.inUse--;
  if (yields(s)) return [{ kind: "release", lease }, ...cover(s)];
  // The report is old (and so is the last question): this lease goes back, and the acquire for
  // the next local waiter asks again. At most one lease per staleAfterMs goes back this way, so
  // while the answer is on its way (or queued at a full coordinator) the block keeps working.
  const stale = now - Math.max(s.observedAt, s.askedAt) > (s.config.staleAfterMs ?? DEFAULT_STALE_AFTER_MS);
  if (stale && s.config.yieldToQueue !== false && s.waiting.length > 0) {
    s.askedAt = now;
    return [{ kind: "release", lease }, ...cover(s)];
  }
  return place(s, lease, now);
}

/**
 * The coordinator answered a grant with its queue length (`load.waiting` of the shard that
 * granted). Its queue counts this isolate's own acquires still in flight too; what is left is
 * taken as others waiting (a lower bound: an acquire still on its way is not counted there yet).
 * While others wait, idle block leases go back at once.
 *
 * @example
 * for (const fx of observe(block, result.load.waiting, now)) perform(fx);
 */
export function observe<L>(s: BlockState<L>, waitingAtCoordinator: number, now: number): BlockEffect<L>[] {
  s.queuedElsewhere = Math.max(0, waitingAtCoordinator - s.inFlight);
  s.observedAt = now;
  if (!yields(s) || s.idle.length === 0) return [];
  const out = s.idle.map((entry): BlockEffect<L> => ({ kind: "release", lease: entry.lease }));
  s.idle = [];
  return out;
}

/**
 * Time passes: leases idle for `idleMs` or more are released.
 *
 * @example
 * for (const fx of expireIdle(block, now)) perform(fx);
 */
export function expireIdle<L>(s: BlockState<L>, now: number): BlockEffect<L>[] {
  const out: BlockEffect<L>[] = [];
  s.idle = s.idle.filter((entry) => {
    if (now - entry.since < s.config.idleMs) return true;
    out.push({ kind: "release", lease: entry.lease });
    return false;
  });
  return out;
}

/**
 * A request finished with a lease that must not be handed on (too old to reuse safely): the
 * shell releases it to its coordinator; a local waiter not covered by an acquire in flight gets one.
 *
 * @example
 * for (const fx of retired(block, now)) perform(fx); send release of the old lease
 */
export function retired<L>(s: BlockState<L>, now: number): BlockEffect<L>[] {
  void now;
  s.inUse--;
  return cover(s);
}

/**
 * A local waiter gave up (its deadline passed): it leaves the local queue. An acquire already
 * sent for it stays in flight; its lease idles (or serves the next waiter) when it comes.
 *
 * @example
 * if (abandon(block, "req-1")) fail("req-1", "ACQUIRE_TIMEOUT");
 */
export function abandon<L>(s: BlockState<L>, id: string): boolean {
  const at = s.waiting.indexOf(id);
  if (at < 0) return false;
  s.waiting.splice(at, 1);
  return true;
}
