/**
 * The core's data: plain types (and the priority classes) that every other core module imports.
 * This module imports nothing, so imports in the core point one way.
 */

/**
 * Priority classes, most urgent first. `critical` may use the reserved slots; `batch` is capped.
 * Within a class, tenants take turns (the one served least recently goes next), and each tenant's
 * waiters go in arrival order — so one tenant's burst cannot starve the others.
 */
export const PRIORITIES = ["critical", "normal", "batch"] as const;
export type Priority = (typeof PRIORITIES)[number];

/**
 * How the queue picks among waiters of equal standing (same class, same tenant turn):
 * `fifo` — oldest first, always; `adaptive` — oldest first until a standing queue forms (the
 * oldest waiter has waited longer than `QUEUE_TARGET_MS` for `QUEUE_INTERVAL_MS`), then newest
 * first until the queue drains below the target (Facebook's adaptive LIFO with CoDel).
 */
export const QUEUE_MODES = ["fifo", "adaptive"] as const;
export type QueueMode = (typeof QUEUE_MODES)[number];

/** The limits of one pool. All durations are milliseconds. */
export interface PoolConfig {
  /** Slots in the pool: leases held at once never exceed it. */
  readonly limit: number;
  /** Waiters beyond this are shed at once with `QUEUE_FULL`. */
  readonly maxQueue: number;
  /** Default queue deadline of an acquire that names none. */
  readonly waitMs: number;
  /** Lease lifetime without renewal. */
  readonly leaseTtlMs: number;
  /** Slots only `critical` waiters may use (like PgBouncer's reserve pool). Default 0. */
  readonly reserved?: number | undefined;
  /** Most leases `batch` waiters may hold at once. Default: no cap beyond the limit. */
  readonly batchMax?: number | undefined;
  /** Moves the limit between a floor and `limit` by observed hold times. Default: off. */
  readonly adaptive?: AdaptiveConfig | undefined;
  /**
   * How equal waiters are picked: see {@link QUEUE_MODES}. Absent here, as `LEASE_QUEUE` unset,
   * means `adaptive` (`DEFAULT_QUEUE_MODE`).
   */
  readonly queue?: QueueMode | undefined;
}

/** How an adaptive limit moves: a floor it never goes below, and how much slowness it tolerates. */
export interface AdaptiveConfig {
  /** The adaptive limit never goes below this many slots. */
  floor: number;
  /** Shrink when recent hold times exceed the long-run baseline by this factor (default 1.5). */
  tolerance?: number | undefined;
}

/** The adaptive limit's memory: plain data, like the rest of the pool. */
export interface AdaptiveState {
  limit: number;
  /** EWMA of recent hold times (fast) and of the long-run baseline (slow), ms. */
  recentMs: number;
  baselineMs: number;
  samples: number;
  /** When the last sample came, so the baseline moves by time, not by sample count. */
  lastSampleAt?: number | undefined;
}

/**
 * The standing-queue detector of `queue: "adaptive"` (CoDel's memory, as plain data). `since`: from
 * when the oldest waiter has been older than the target without a break (null: no standing queue);
 * `lifo`: newest-first is in force (the standing queue has lasted the interval). Both stay
 * null/false with `queue: "fifo"`.
 */
export interface StandingQueue {
  since: number | null;
  lifo: boolean;
}

/**
 * A fixed-bucket histogram of durations in milliseconds: small, mergeable, serializable, and the
 * same buckets Prometheus exposes. Percentiles are read by linear interpolation inside a bucket.
 */
export interface Histogram {
  /** Upper bounds (inclusive) of the buckets, ascending; a last implicit bucket is +Inf. */
  readonly bounds: readonly number[];
  /** counts[i] is the number of samples in bucket i (not cumulative); length = bounds.length + 1. */
  counts: number[];
  count: number;
  sum: number;
  max: number;
}

/** The right to hold one database connection until released or until `expiresAt`. */
export interface Lease {
  /** Unguessable id, chosen by the shell (the core has no randomness). */
  readonly id: string;
  /** Strictly increasing per pool: a release must name the fence it was granted with. */
  readonly fence: number;
  /** Who holds it (request id, process id): shown to operators. */
  readonly holder: string;
  readonly grantedAt: number;
  expiresAt: number;
  /** The class it was granted in, when not `normal`. */
  readonly priority?: Priority | undefined;
  /** True for a lease granted before a restart and re-registered in the recovery window by its holder's renewal. */
  readonly recovered?: true | undefined;
  /**
   * Set when an operator revoked it. A revoked lease still counts as held — its holder may still be
   * running a statement, and hears of the revoke only at its next renewal — until it is released
   * or reaches its expiry; it is never renewed again.
   */
  revoked?: true | undefined;
}

/** A request queued for a slot. It is granted under `leaseId` or times out at `deadline`. */
export interface Waiter {
  readonly leaseId: string;
  readonly holder: string;
  readonly enqueuedAt: number;
  readonly deadline: number;
  readonly ttlMs: number;
  /**
   * Lifetime of the lease if it is granted from the queue, until its caller claims it (renews):
   * a caller that vanished while it waited never claims, and its slot comes back this soon.
   */
  readonly claimMs?: number | undefined;
  readonly priority?: Priority | undefined;
  readonly tenant?: string | undefined;
  /** The wait predicted when it was queued, ms (see `predictWaitMs`): its error is measured at its grant. */
  readonly predictedMs?: number | undefined;
}

/**
 * What the pool has learned for predicting waits, and how good its predictions were (plain data,
 * kept in the snapshot): a recent mean hold time, and for waiters granted from the queue their
 * predicted and actual waits.
 */
export interface WaitPrediction {
  /** Recent mean hold time (grant to release), ms: an EWMA with gain 1/16. */
  holdMs: number;
  /** Hold times observed. */
  holds: number;
  /** Waiters granted from the queue with a prediction: their errors are summed below. */
  waits: number;
  predictedSumMs: number;
  actualSumMs: number;
  absErrorSumMs: number;
  /**
   * Of those, the ones served in less than their prediction divided by `SHED_MARGIN`: a caller
   * shed on such a prediction would have been served in time.
   */
  early: number;
  /** The recent share of such waits (an EWMA with gain 1/32): shedding pauses while it is above `SHED_MAX_EARLY_SHARE`. */
  earlyShare: number;
  /** Callers answered at once because their predicted wait exceeded their deadline. */
  shed: number;
}

export interface Counters {
  granted: number;
  released: number;
  expired: number;
  timedOut: number;
  rejected: number;
  cancelled: number;
}

/**
 * Everything a pool knows. Plain data: a backend stores the leases (and, in Postgres, the waiters) as
 * rows and the rest as one `snapshot`.
 */
export interface PoolState {
  config: PoolConfig;
  nextFence: number;
  leases: Map<string, Lease>;
  /**
   * In arrival order: index 0 waited longest. FIFO grants it first; LIFO (under a standing queue,
   * `queue: "adaptive"`) grants the last first.
   */
  queue: Waiter[];
  /** Whether a standing queue has formed and newest-first is in force (`queue: "adaptive"`). */
  standing: StandingQueue;
  counters: Counters;
  waits: Histogram;
  /** Sum and count of completed hold times, for the Retry-After estimate. */
  holdMsSum: number;
  holdCount: number;
  /** Predicted waits: what a hopeless waiter is told at once, and how good the predictions were. */
  prediction: WaitPrediction;
  /** Per tenant, the turn it was last served in; `serveSeq` counts turns. */
  lastServed: Map<string, number>;
  serveSeq: number;
  /** The adaptive limit's state, when `config.adaptive` is set. */
  adaptive: AdaptiveState | undefined;
  /** Operator drain: while set, no slot is granted (held leases run on, waiters queue and time out). */
  paused: boolean;
  /** The limit an operator set, kept across restarts; null: `config.limit` is the configured one. */
  limitOverride: number | null;
  /**
   * A shard of a pool whose root shares one limit (`src/core/shares.ts`): the most leases this
   * pool may grant up to now, which may be 0. Undefined: not a shard, `config.limit` alone counts.
   */
  share?: number | undefined;
  /**
   * After a restart that forgot its leases: until `until`, nothing is granted and the holders of
   * leases granted before the restart (fences below `recoverBelowFence`) re-register them by
   * renewing with a token that verifies. Undefined when the pool knows every lease it granted.
   */
  recovery?: Recovery | undefined;
}

/** A recovery window (see `PoolState.recovery`, `src/core/recovery.ts`). */
export interface Recovery {
  /** The window ends here: the stored horizon plus the clock margin. */
  readonly until: number;
  /** Every expiry answered before the restart is at or before this (the stored horizon). */
  readonly horizon: number;
  /** Leases granted before the restart have fences below this (the stored fence ceiling). */
  readonly recoverBelowFence: number;
  /** Leases re-registered in this window so far. */
  recovered: number;
  /**
   * Ids of earlier leases released or revoked in this window: a late heartbeat of one (sent before
   * its release) must not register it again as a phantom that takes a live holder's slot.
   */
  readonly tombstones: Set<string>;
}

/** What a transition did besides its own answer: the shell wakes, fails or forgets these. */
export interface Effects {
  /** Waiters that now hold a lease (lease.id is the waiter's leaseId). */
  granted: Lease[];
  /** Waiters whose deadline passed before a slot freed. */
  timedOut: Waiter[];
  /** Leases reaped because their holder neither released nor renewed them in time. */
  expired: Lease[];
}

export type AcquireOutcome =
  | { readonly status: "granted"; readonly lease: Lease }
  | { readonly status: "queued"; readonly deadline: number; readonly position: number }
  /** Only with `queue: false`: no slot may be taken now; nothing was recorded, the caller asks again on its own. */
  | { readonly status: "deferred" }
  | {
      readonly status: "rejected";
      readonly code: "QUEUE_FULL" | "ACQUIRE_TIMEOUT";
      readonly message: string;
      readonly retryAfterMs: number;
    };

export type LeaseOutcome =
  | { readonly status: "ok"; readonly lease: Lease }
  | {
      readonly status: "failed";
      /** `LEASE_LOST`: an operator revoked the lease (its renewal is refused; its release frees the slot). */
      readonly code: "LEASE_NOT_FOUND" | "STALE_FENCE" | "LEASE_EXPIRED" | "LEASE_LOST";
      readonly message: string;
    };

export interface AcquireRequest {
  /** The id the lease will carry; also identifies the waiter while it is queued. */
  leaseId: string;
  holder: string;
  /** Queue deadline, relative to now; 0 means "only if a slot is free now". Defaults to config.waitMs. */
  waitMs?: number | undefined;
  /** Lease lifetime; defaults to config.leaseTtlMs. */
  ttlMs?: number | undefined;
  /** Lifetime of a grant from the queue until the caller claims it (capped by `ttlMs`); default: none. */
  claimMs?: number | undefined;
  /** Priority class; defaults to `normal`. */
  priority?: Priority | undefined;
  /** Fairness key: tenants take turns within a class. */
  tenant?: string | undefined;
  /**
   * `false`: decide only a grant now. A request that would wait or be shed is `deferred` instead,
   * leaving queue and counters as they were (a batch grants what it can and sends the rest on
   * their own, so they queue, time out and are counted exactly like single calls).
   */
  queue?: boolean | undefined;
}

export interface LeaseRef {
  leaseId: string;
  fence: number;
  /**
   * The expiry the holder was last told (sent on renewal and release). A coordinator in its
   * recovery window after a restart re-registers an earlier lease only with this and its `token`,
   * only while it is still ahead (less the clock margin), and only until this expiry.
   */
  expiresAt?: number | undefined;
  /**
   * The token the lease was last answered with (`LeaseGrant.token`), sent back as is: it proves
   * the id, fence and `expiresAt` came from the coordinator. Without it a lease is not recovered.
   */
  token?: string | undefined;
}

export interface HeldLease {
  idPrefix: string;
  holder: string;
  fence: number;
  ageMs: number;
  expiresInMs: number;
  /** Present when an operator revoked it: still counted until released or expired. */
  revoked?: true | undefined;
}

export interface PoolStats {
  limit: number;
  /** The limit in force now: below `limit` while the adaptive limit has shrunk it. */
  effectiveLimit: number;
  reserved: number;
  held: number;
  waiting: number;
  /** Age of the oldest waiter, ms (0 when nobody waits). */
  maxWaitMs: number;
  maxQueue: number;
  waitMs: number;
  leaseTtlMs: number;
  counters: Counters;
  waitTimeMs: { p50: number; p90: number; p99: number; max: number; count: number; sum: number };
  waitHistogram: { bounds: readonly number[]; counts: number[] };
  leases: HeldLease[];
  /** True while an operator has paused granting (drain). */
  paused: boolean;
  /**
   * The queue mode configured (`LEASE_QUEUE`) and whether newest-first is in force (a standing
   * queue under `adaptive`, as of the pool's last transition; always false under `fifo`).
   */
  queue: { mode: QueueMode; lifo: boolean };
  /**
   * While a restarted pool is in its recovery window (nothing is granted; verified renewals of
   * leases granted before the restart re-register them): how long it still lasts and how many
   * leases their holders re-registered so far; else null.
   */
  recovery: { endsInMs: number; recovered: number } | null;
  /**
   * Predicted waits (see `predictWaitMs`): `shed` callers were answered at once because their
   * predicted wait exceeded their deadline; for the `waits` granted from the queue, the mean
   * predicted and actual wait and the mean absolute error, ms, and the share served in under their
   * prediction divided by the shed margin (`earlyShare` recent, `early` all time): the share such a
   * shed would have got wrong. `shedding`: whether a hopeless wait would be answered at once now.
   * Merged across shards: counts summed, means weighted by each shard's waits.
   */
  prediction?: {
    shed: number;
    waits: number;
    meanPredictedMs: number;
    meanActualMs: number;
    meanAbsErrorMs: number;
    early: number;
    earlyShare: number;
    holdMs: number;
    shedding: boolean;
  };
  /**
   * A shard of a pool whose root shares one limit by demand (`src/core/shares.ts`): the share in
   * force, the most held + waiting since its last report, and why its last report failed (null
   * when it was answered). Absent on a pool that is not shared.
   */
  share?: { share: number; peak: number; failure: string | null } | undefined;
  /** The root of a shared pool: the global limit, the layout and every shard's account. */
  shares?: { limit: number; layout: Layout; shards: ShareView[] } | undefined;
}

/**
 * How a root splits its limit among shards: `demand` (default) by each shard's demand, max-min
 * fair, what no shard wants kept free at the root; `even` in equal fixed parts among the layout's shards.
 */
export const SHARE_SPLITS = ["demand", "even"] as const;
export type ShareSplit = (typeof SHARE_SPLITS)[number];

/** The shards a root plans for: `count` objects `${pool}#i` (1: the root's own pool alone), split `split`. */
export interface Layout {
  readonly count: number;
  readonly split: ShareSplit;
}

/** One shard's line in a root's stats. */
export interface ShareView {
  /** `root` (the root's own pool) or the shard's index. */
  readonly shard: string;
  readonly share: number;
  /** The most leases the shard may hold until it reports again: its share, or more while it gives slots back. */
  readonly reserve: number;
  /** The largest held + waiting it reported within the demand window. */
  readonly demand: number;
  readonly held: number;
  /** Whether the shard is one of the layout's. */
  readonly inLayout: boolean;
  /** How long ago the shard last reported, ms; null: not since the root started. */
  readonly reportedAgoMs: number | null;
}
