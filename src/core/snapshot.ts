import { LeaseError, expected } from "./errors.ts";
import { createPool } from "./pool.ts";
import { adaptiveFollowsLimit, noPrediction } from "./scheduling.ts";
import type {
  AdaptiveState,
  Counters,
  Lease,
  PoolConfig,
  PoolState,
  StandingQueue,
  WaitPrediction,
  Waiter,
} from "./types.ts";

/**
 * What a backend stores of a pool besides its lease rows (and, in Postgres, its waiter rows): one
 * plain JSON value. The backend treats it as opaque; only the core reads it. `v` is its version:
 * a change of shape gets a new number and `restore` reads every number it ever wrote.
 */
export interface PoolSnapshot {
  readonly v: 1;
  readonly nextFence: number;
  readonly counters: Counters;
  readonly waits: { readonly counts: number[]; readonly count: number; readonly sum: number; readonly max: number };
  readonly holdMsSum: number;
  readonly holdCount: number;
  readonly lastServed: ReadonlyArray<readonly [string, number]>;
  readonly serveSeq: number;
  readonly adaptive: AdaptiveState | null;
  readonly paused: boolean;
  readonly limitOverride: number | null;
  /**
   * The standing-queue detector (`queue: "adaptive"`). The local adapter loads the pool afresh for
   * every transition, so without it a standing queue could never last an interval. Absent in
   * snapshots written before it existed: read as no standing queue.
   */
  readonly standing?: StandingQueue | undefined;
  /**
   * What predicts waits (the recent hold time) and how good the predictions were. The local
   * adapter loads the pool afresh for every transition, so without it nothing would be learned.
   * Absent in snapshots written before it existed: read as nothing observed.
   */
  readonly prediction?: WaitPrediction | undefined;
}

/**
 * The pool's state apart from its leases and waiters, as plain JSON (the backend stores it in the
 * same transaction as the rows a transition changed).
 *
 * @example
 * storage.put("snapshot", JSON.stringify(snapshot(pool)));
 */
export function snapshot(state: PoolState): PoolSnapshot {
  const w = state.waits;
  return {
    v: 1,
    nextFence: state.nextFence,
    counters: { ...state.counters },
    waits: { counts: [...w.counts], count: w.count, sum: w.sum, max: w.max },
    holdMsSum: state.holdMsSum,
    holdCount: state.holdCount,
    lastServed: [...state.lastServed],
    serveSeq: state.serveSeq,
    adaptive: state.adaptive === undefined ? null : { ...state.adaptive },
    paused: state.paused,
    limitOverride: state.limitOverride,
    standing: { ...state.standing },
    prediction: { ...state.prediction },
  };
}

/**
 * A pool as a backend stored it: `config` from the environment or options (an operator's limit in
 * the snapshot wins over its `limit`), the snapshot (null for a pool never stored), the lease rows
 * and, where the backend keeps them, the waiters in queue order.
 *
 * @example
 * const pool = restore(configFromEnv(env), JSON.parse(row.value), leases);
 */
export function restore(
  config: PoolConfig,
  snap: PoolSnapshot | null,
  leases: Iterable<Lease>,
  queue: Waiter[] = [],
): PoolState {
  if (snap === null) {
    const fresh = createPool(config, { leases, nextFence: 1 });
    fresh.queue = queue;
    return fresh;
  }
  if (typeof snap !== "object" || snap.v !== 1) {
    throw new LeaseError(
      "INTERNAL",
      expected("snapshot", "a pool snapshot of version 1", (snap as { v?: unknown })?.v),
    );
  }
  const limit = snap.limitOverride ?? config.limit;
  const state = createPool({ ...config, limit }, { leases, nextFence: snap.nextFence });
  state.queue = queue;
  state.counters = { ...snap.counters };
  if (snap.waits.counts.length === state.waits.counts.length) {
    state.waits = {
      ...state.waits,
      counts: [...snap.waits.counts],
      count: snap.waits.count,
      sum: snap.waits.sum,
      max: snap.waits.max,
    };
  }
  state.holdMsSum = snap.holdMsSum;
  state.holdCount = snap.holdCount;
  state.lastServed = new Map(snap.lastServed);
  state.serveSeq = snap.serveSeq;
  // A pool whose config turned adaptive on starts from a fresh adaptive state; off drops it.
  if (state.adaptive && snap.adaptive !== null) state.adaptive = { ...snap.adaptive };
  adaptiveFollowsLimit(state);
  state.paused = snap.paused;
  state.limitOverride = snap.limitOverride;
  state.prediction = snap.prediction ? { ...noPrediction(), ...snap.prediction } : noPrediction();
  // A detector stored under `adaptive` means nothing to a pool now configured `fifo`.
  if (snap.standing && state.config.queue === "adaptive")
    state.standing = { since: snap.standing.since, lifo: snap.standing.lifo };
  return state;
}
