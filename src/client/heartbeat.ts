import { type LeaseGrant, BOUNDS, LeaseError, checkInt, isLeaseError } from "../core/index.ts";

/** What a heartbeat needs of a lease client: `Leases` and `ShardedLeases` both have it. */
export interface Renewer {
  renew(lease: LeaseGrant, ttlMs?: number): Promise<LeaseGrant>;
}

/** Runs `fn` after `ms`; returns the function that cancels it. */
export type SetTimer = (fn: () => void, ms: number) => () => void;

export interface HeartbeatOptions {
  /**
   * Renew every this many ms while the work runs; `0` turns renewal off (the lease then lives
   * exactly its TTL). Default: a third of the lease's lifetime, so two beats can fail before it
   * expires, and work shorter than that makes no extra call.
   */
  heartbeatMs?: number | undefined;
  /** Timers (the database layer injects its runtime's); default `setTimeout`. */
  setTimer?: SetTimer | undefined;
  /** The coordinator refused a renewal: the lease is gone (expired, reaped or revoked). */
  onLost?: ((error: LeaseError) => void) | undefined;
  /** A renewal could not be made (coordinator unreachable); the next beat tries again. */
  onError?: ((error: unknown) => void) | undefined;
  /**
   * The lease is a grant from the queue not claimed yet (it lives the client's claim window, see
   * `LeasesOptions.claimMs`): the first beat, a third of the way into that window, is its claim —
   * it renews the lease to `ttlMs` (undefined: the pool's TTL) — also when renewal is off. Work that
   * ends sooner makes no claim call: its release is all the coordinator hears.
   */
  claim?: { ttlMs: number | undefined } | undefined;
}

/** A running heartbeat: the lease as last renewed, and the switch that stops it. */
export interface Heartbeat {
  readonly lease: LeaseGrant;
  /** Renewals that succeeded so far. */
  readonly beats: number;
  stop(): void;
}

const systemTimer: SetTimer = (fn, ms) => {
  const id = setTimeout(fn, ms);
  return () => clearTimeout(id);
};

/** Codes that mean the coordinator no longer counts the lease: renewing again cannot help. */
const LOST = new Set(["LEASE_EXPIRED", "LEASE_NOT_FOUND", "STALE_FENCE"]);

/**
 * The default beat of a lease: a third of its lifetime (durations, not timestamps: the caller's
 * clock and the coordinator's may disagree).
 *
 * @example
 * defaultHeartbeatMs({ grantedAt: 0, expiresAt: 2000 }) // 666
 */
export function defaultHeartbeatMs(lease: Pick<LeaseGrant, "grantedAt" | "expiresAt">): number {
  return Math.max(1, Math.floor((lease.expiresAt - lease.grantedAt) / 3));
}

/**
 * Keeps a lease alive while its holder is alive: renews it by its own lifetime every
 * `heartbeatMs`. A holder whose request was cancelled runs no timers, so its lease is renewed no
 * more and comes back within one lifetime of its last beat — that, not a `finally`, is what bounds
 * the slot a vanished caller holds.
 *
 * @example
 * const beat = heartbeat(leases, lease);
 * try { await longQuery(); } finally { beat.stop(); await leases.release(beat.lease); }
 */
export function heartbeat(leases: Renewer, granted: LeaseGrant, options: HeartbeatOptions = {}): Heartbeat {
  const fixedMs =
    options.heartbeatMs === undefined ? undefined : checkInt("heartbeatMs", options.heartbeatMs, 0, BOUNDS.leaseTtlMs);
  const setTimer = options.setTimer ?? systemTimer;
  const startedAt = Date.now();
  let everyMs = fixedMs ?? defaultHeartbeatMs(granted);
  let current = granted;
  // Unclaimed, the lease lives the claim window: the claim asks for the full TTL, and comes early enough.
  let claiming = options.claim !== undefined;
  const ttlMs = options.claim ? options.claim.ttlMs : Math.max(1, granted.expiresAt - granted.grantedAt);
  let beats = 0;
  let stopped = false;
  let cancel: () => void = () => {};
  const beat = () => {
    leases.renew(current, ttlMs).then(
      (renewed) => {
        if (stopped) return;
        current = renewed;
        beats++;
        if (claiming) {
          claiming = false;
          // Its lifetime from the claim on: the new expiry less the time since the grant, as this clock saw it.
          const lifetimeMs = renewed.expiresAt - renewed.grantedAt - (Date.now() - startedAt);
          everyMs = fixedMs ?? Math.max(1, Math.floor(lifetimeMs / 3));
        }
        schedule();
      },
      (error: unknown) => {
        if (stopped) return;
        if (isLeaseError(error) && LOST.has(error.code)) {
          stopped = true;
          options.onLost?.(error);
          return;
        }
        options.onError?.(error);
        schedule();
      },
    );
  };
  const schedule = () => {
    const claimBy = defaultHeartbeatMs(granted);
    const delayMs = claiming ? (everyMs > 0 ? Math.min(everyMs, claimBy) : claimBy) : everyMs;
    if (delayMs > 0) cancel = setTimer(beat, delayMs);
  };
  schedule();
  return {
    get lease() {
      return current;
    },
    get beats() {
      return beats;
    },
    stop() {
      stopped = true;
      cancel();
    },
  };
}

/** The error a lease's scope is aborted with when its heartbeat learns the lease is gone. */
export function leaseLost(cause: LeaseError): LeaseError {
  return new LeaseError(cause.code, "The lease was lost while the work ran: stop using its connection", { cause });
}
