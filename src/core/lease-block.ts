/**
 * Lease batching inside one isolate: the isolate keeps the leases it was granted for a short idle
 * time and hands them to its own next requests without a round trip, returning them when idle.
 *
 * Pure: the shell feeds events (a request arrives, a grant arrives, work finishes, time passes)
 * and performs the returned effects (send an acquire, send a release, start work with a lease,
 * fail a local waiter). Bounded: at most `maxBlock` leases held or requested per isolate, and a
 * lease idle for `idleMs` goes back, so a quiet isolate cannot sit on slots a busy one needs.
 *
 * One holder per slot: every hand-on of a lease gets a generation of its own, and only a release
 * presenting the current one gives the lease back to the block (`finished`); a repeated or late
 * release of an earlier hand-on changes nothing, so it can never free a slot someone else uses.
 *
 * Nothing stranded: the block lives as long as its isolate, and requests can be torn down at any
 * point (CPU limit, `waitUntil` cap) without telling it. Every call first reaps what outlived its
 * lifetime: a lease in use past its end (its holder stopped by its own clock, or is gone; the
 * coordinator expires it by its TTL), an acquire unanswered past its deadline, a local waiter past
 * its deadline, and idle leases past `idleMs` or too old to hand on.
 *
 * Global order: a block must not serve its own request ahead of an older caller waiting at the
 * coordinator. A lease is handed on inside the isolate only while the coordinator last said nobody
 * else waits there (`observe`, fed from the load its answers carry), and only to a request that
 * report covers:
 * - any request, while the report is at most `staleAfterMs` old: a caller that queued at the
 *   coordinator since is overtaken for at most `staleAfterMs` plus the report's one-way trip;
 * - whatever the report's age, a request that has waited in the isolate since before the call that
 *   brought the report was sent, when that report found the coordinator's queue empty (nobody at
 *   all waited, so none of its waiters can be another isolate's hidden behind this one's acquires
 *   in flight). Every caller waiting at the coordinator now queued after the report, so after that
 *   request began to wait: it goes first in arrival order, and nobody older is overtaken (up to the
 *   one-way trip of a caller's acquire to the coordinator).
 * Otherwise the lease goes back and the request asks the coordinator, queueing behind whoever waits
 * there. A busy isolate with a backlog of its own keeps its leases under an old report this way; a
 * request that finds an idle lease needs a fresh report.
 */
export interface BlockConfig {
  /** Most leases this isolate may hold or have requested at once. */
  maxBlock: number;
  /** How long a lease may sit unused before it is released, ms. */
  idleMs: number;
  /**
   * Whether leases go back while callers wait at the coordinator, or its report neither is fresh
   * nor covers the request (the default, `true`; see the global order above). `false` hands on
   * young leases whoever waits: for side-by-side comparisons only.
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

/**
 * How long past its deadline an acquire the block sent may still be answered before the block
 * stops counting it, ms: a request torn down mid-call never sees its answer. A grant that comes
 * later still goes straight back.
 *
 * @example
 * reap(block, ask.deadline + ASK_GRACE_MS) // the unanswered acquire no longer counts
 */
export const ASK_GRACE_MS = 1000;

/** A block lease's lifetime on the shell's clock. */
export interface LeaseLife {
  /** When the lease ends as this isolate counts (the acquire's send time plus `validForMs`); renewals move it. */
  endsAt: number;
  /** The last moment it may be handed on to another request (while it keeps most of its TTL). */
  reuseUntil: number;
}

export interface BlockState<L> {
  config: BlockConfig;
  /** Leases no request uses, newest last, with when they went idle. */
  idle: Array<{ lease: L; since: number; life: LeaseLife }>;
  /** Leases in use, by the generation of the hand-on that gave them to their request. */
  inUse: Map<number, { lease: L; life: LeaseLife }>;
  /** Acquires sent and not answered yet, by number: until when an answer may come. */
  asks: Map<number, number>;
  /** Local requests waiting for a lease, in arrival order, with when they came and their deadlines. */
  waiting: Array<{ id: string; since: number; deadline: number }>;
  /** The last generation or acquire number given out. */
  seq: number;
  /** Callers of other isolates waiting at the coordinator, as it last reported (`observe`). */
  queuedElsewhere: number;
  /** When that report came (the shell's clock); -Infinity before the first. */
  observedAt: number;
  /**
   * When the call that brought that report was sent, if the report found the coordinator's queue
   * empty (else -Infinity): a local request waiting since before then is older than every caller
   * waiting at the coordinator since.
   */
  emptySince: number;
}

export type BlockEffect<L> =
  /** Send an acquire with `request`'s options, waiting until `deadline`; answer with `granted`/`refused`. */
  | { kind: "acquire"; ask: number; request: string; deadline: number }
  | { kind: "release"; lease: L }
  /** `request` runs with `lease` until `endsAt`; its release presents `generation`. */
  | { kind: "start"; request: string; lease: L; generation: number; endsAt: number }
  /** `request` leaves the block unserved: its deadline passed, or the coordinator refused its acquire. */
  | { kind: "fail"; request: string; reason: "deadline" | "refused" };

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
    inUse: new Map(),
    asks: new Map(),
    waiting: [],
    seq: 0,
    queuedElsewhere: 0,
    observedAt: Number.NEGATIVE_INFINITY,
    emptySince: Number.NEGATIVE_INFINITY,
  };
}

function held<L>(s: BlockState<L>): number {
  return s.idle.length + s.inUse.size + s.asks.size;
}

function keeps<L>(s: BlockState<L>): boolean {
  return s.config.yieldToQueue === false;
}

/**
 * Whether a lease may be handed on now to a local request waiting since `since`: nobody waits at
 * the coordinator, as it said lately, or as it said with its queue empty after the request came.
 */
function mayHandOn<L>(s: BlockState<L>, now: number, since: number): boolean {
  if (keeps(s)) return true;
  if (s.queuedElsewhere > 0) return false;
  return now - s.observedAt <= (s.config.staleAfterMs ?? DEFAULT_STALE_AFTER_MS) || since < s.emptySince;
}

function start<L>(s: BlockState<L>, request: string, lease: L, life: LeaseLife): BlockEffect<L> {
  const generation = ++s.seq;
  s.inUse.set(generation, { lease, life });
  return { kind: "start", request, lease, generation, endsAt: life.endsAt };
}

/** Acquires for the local waiters no acquire in flight covers, within the block bound. */
function cover<L>(s: BlockState<L>): BlockEffect<L>[] {
  const out: BlockEffect<L>[] = [];
  while (s.asks.size < s.waiting.length && held(s) < s.config.maxBlock) {
    // Each acquire waits as long as the oldest waiter it is the first to cover.
    const waiter = s.waiting[s.asks.size]!;
    const ask = ++s.seq;
    s.asks.set(ask, waiter.deadline + ASK_GRACE_MS);
    out.push({ kind: "acquire", ask, request: waiter.id, deadline: waiter.deadline });
  }
  return out;
}

/**
 * Time passes: whatever outlived its lifetime leaves the block. Idle leases past `idleMs`, past
 * `reuseUntil` or past their end go back; a lease in use past its end is forgotten (its holder
 * stopped by its own clock or is gone; the coordinator expires it — a release could free it after a
 * renewal this block did not see); an acquire unanswered past its deadline stops counting; a local
 * waiter past its deadline fails. Room freed goes to acquires for the waiters left. Every other
 * call reaps first; the shell also calls it on a timer (`nextReapAt`).
 *
 * @example
 * for (const fx of reap(block, now)) perform(fx);
 */
export function reap<L>(s: BlockState<L>, now: number): BlockEffect<L>[] {
  return [...expire(s, now), ...cover(s)];
}

/** `reap` without the acquires for the room it frees: each call covers its waiters last. */
function expire<L>(s: BlockState<L>, now: number): BlockEffect<L>[] {
  const out: BlockEffect<L>[] = [];
  s.idle = s.idle.filter((entry) => {
    const fresh = now - entry.since < s.config.idleMs && now <= entry.life.reuseUntil && now < entry.life.endsAt;
    if (!fresh) out.push({ kind: "release", lease: entry.lease });
    return fresh;
  });
  for (const [generation, hand] of s.inUse) if (now >= hand.life.endsAt) s.inUse.delete(generation);
  for (const [ask, until] of s.asks) if (now >= until) s.asks.delete(ask);
  s.waiting = s.waiting.filter((w) => {
    if (now < w.deadline) return true;
    out.push({ kind: "fail", request: w.id, reason: "deadline" });
    return false;
  });
  return out;
}

/**
 * When `reap` next has something to do, on the shell's clock (`undefined`: nothing to reap).
 *
 * @example
 * nextReapAt(block) // 1520: the shell wakes then and calls reap(block, its time)
 */
export function nextReapAt<L>(s: BlockState<L>): number | undefined {
  let at = Number.POSITIVE_INFINITY;
  for (const e of s.idle) at = Math.min(at, e.since + s.config.idleMs, e.life.reuseUntil + 1, e.life.endsAt);
  for (const hand of s.inUse.values()) at = Math.min(at, hand.life.endsAt);
  for (const until of s.asks.values()) at = Math.min(at, until);
  for (const w of s.waiting) at = Math.min(at, w.deadline);
  return at === Number.POSITIVE_INFINITY ? undefined : at;
}

/**
 * A local request wants a lease until `deadline`: served from the idle block at once when a lease
 * may be handed on; else queued locally, with an acquire sent when the block has room for one more.
 * An idle lease that may not be handed on (others wait, or the report is stale) goes back first,
 * so the request queues at the coordinator behind whoever waits there.
 *
 * @example
 * for (const fx of request(block, "req-1", now, now + waitMs)) perform(fx);
 */
export function request<L>(s: BlockState<L>, id: string, now: number, deadline: number): BlockEffect<L>[] {
  const out = expire(s, now);
  const free = s.idle.pop();
  if (free && mayHandOn(s, now, now)) return [...out, start(s, id, free.lease, free.life), ...cover(s)];
  if (free) out.push({ kind: "release", lease: free.lease });
  s.waiting.push({ id, since: now, deadline });
  return [...out, ...cover(s)];
}

/** A lease the block holds for nobody yet: to the oldest local waiter, back, or idle. */
function place<L>(s: BlockState<L>, lease: L, life: LeaseLife, now: number): BlockEffect<L>[] {
  const next = s.waiting.shift();
  if (next !== undefined) return [start(s, next.id, lease, life)];
  if (s.queuedElsewhere > 0 && !keeps(s)) return [{ kind: "release", lease }];
  s.idle.push({ lease, since: now, life });
  return [];
}

/**
 * The coordinator granted acquire `ask` a lease that lives `life`. Straight from the coordinator's
 * queue, it goes to the oldest local waiter whatever the report says. A grant for an acquire the
 * block stopped counting (`reap`), or one that has already ended, goes back.
 *
 * @example
 * for (const fx of granted(block, fx.ask, lease, { endsAt, reuseUntil }, now)) perform(fx);
 */
export function granted<L>(s: BlockState<L>, ask: number, lease: L, life: LeaseLife, now: number): BlockEffect<L>[] {
  const counted = s.asks.delete(ask);
  const out = expire(s, now);
  if (!counted || now >= life.endsAt) return [...out, { kind: "release", lease }, ...cover(s)];
  return [...out, ...place(s, lease, life, now), ...cover(s)];
}

/**
 * Acquire `ask` failed (timeout, shed, unreachable): the oldest local waiter no other acquire in
 * flight covers fails with it — unless `retry` (the coordinator's wait ran out for a deadline that
 * was not this waiter's) and the waiter still has time: then the block asks again for it.
 *
 * @example
 * for (const fx of refused(block, fx.ask, now, error.code === "ACQUIRE_TIMEOUT")) perform(fx);
 */
export function refused<L>(s: BlockState<L>, ask: number, now: number, retry: boolean): BlockEffect<L>[] {
  const counted = s.asks.delete(ask);
  const out = expire(s, now);
  const first = s.waiting[0];
  if (counted && first !== undefined && s.waiting.length > s.asks.size && !(retry && first.deadline > now)) {
    s.waiting.shift();
    out.push({ kind: "fail", request: first.id, reason: "refused" });
  }
  return [...out, ...cover(s)];
}

/**
 * The request given hand-on `generation` finished with its lease: it goes straight to the oldest
 * local waiter while it may be handed on to that waiter (see the module's global order) and is
 * young enough (`reuseUntil`), idles if nobody waits locally, and otherwise goes back — the local
 * waiters then queue at the coordinator too. `null`:
 * `generation` is not a hand-on in use (a repeated or late release, or one reaped past its end),
 * and nothing changes.
 *
 * @example
 * const fx = finished(block, lease.generation, now); if (fx === null) throw notFound(); else perform(fx);
 */
export function finished<L>(s: BlockState<L>, generation: number, now: number): BlockEffect<L>[] | null {
  const hand = s.inUse.get(generation);
  if (hand === undefined) return null;
  s.inUse.delete(generation);
  const out = expire(s, now);
  const { lease, life } = hand;
  // Past its end it goes back too: its holder's release, sent in case the coordinator still counts it.
  const reusable = now <= life.reuseUntil && now < life.endsAt;
  const next = s.waiting[0];
  if (reusable && (next === undefined || mayHandOn(s, now, next.since)))
    return [...out, ...place(s, lease, life, now), ...cover(s)];
  return [...out, { kind: "release", lease }, ...cover(s)];
}

/**
 * Hand-on `generation`'s lease was renewed: the block keeps the renewed `lease` (its new expiry and
 * proof go out with its release or next hand-on) and its new end, `endsAt` (the renewal's send time
 * plus its `validForMs`), so it is not reaped while its holder keeps it alive.
 *
 * @example
 * for (const fx of renewed(block, lease.generation, renewedLease, sentAt + validFor(renewedLease), now)) perform(fx);
 */
export function renewed<L>(
  s: BlockState<L>,
  generation: number,
  lease: L,
  endsAt: number,
  now: number,
): BlockEffect<L>[] {
  const hand = s.inUse.get(generation);
  if (hand !== undefined && now < hand.life.endsAt) {
    s.inUse.set(generation, { lease, life: { ...hand.life, endsAt: Math.max(hand.life.endsAt, endsAt) } });
  }
  return reap(s, now);
}

/**
 * The coordinator answered a grant with its queue length (`load.waiting` of the shard that
 * granted), for the call sent at `sentAt` (default: `now`; `-Infinity`: the report covers no
 * request by its age — with shards, where one shard's queue says nothing of another's). Its queue counts this isolate's own
 * acquires still in flight too; what is left is taken as others waiting (a lower bound: an acquire
 * still on its way is not counted there yet). Only an empty queue says for sure that nobody else
 * waited: then local requests waiting since before `sentAt` may be handed leases however old the
 * report grows. While others wait, idle block leases go back at once.
 *
 * @example
 * for (const fx of observe(block, result.load.waiting, now, sentAt)) perform(fx);
 */
export function observe<L>(
  s: BlockState<L>,
  waitingAtCoordinator: number,
  now: number,
  sentAt: number = now,
): BlockEffect<L>[] {
  s.queuedElsewhere = Math.max(0, waitingAtCoordinator - s.asks.size);
  s.observedAt = now;
  s.emptySince = waitingAtCoordinator === 0 ? Math.min(sentAt, now) : Number.NEGATIVE_INFINITY;
  const out = expire(s, now);
  if (s.queuedElsewhere === 0 || keeps(s) || s.idle.length === 0) return [...out, ...cover(s)];
  for (const entry of s.idle) out.push({ kind: "release", lease: entry.lease });
  s.idle = [];
  return [...out, ...cover(s)];
}

/**
 * A local waiter gave up (its deadline passed, its caller aborted): it leaves the local queue. An
 * acquire already sent for it stays in flight; its lease serves the next waiter or idles.
 *
 * @example
 * if (abandon(block, "req-1")) fail("req-1", "ACQUIRE_TIMEOUT");
 */
export function abandon<L>(s: BlockState<L>, id: string): boolean {
  const at = s.waiting.findIndex((w) => w.id === id);
  if (at < 0) return false;
  s.waiting.splice(at, 1);
  return true;
}

/**
 * Whether the block holds `lease` (idle or in use), by the shell's notion of the same lease.
 *
 * @example
 * if (holds(block, (l) => l.id === lease.id)) throw notFound(); // a block lease without its generation
 */
export function holds<L>(s: BlockState<L>, same: (lease: L) => boolean): boolean {
  if (s.idle.some((e) => same(e.lease))) return true;
  for (const hand of s.inUse.values()) if (same(hand.lease)) return true;
  return false;
}
