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
   * exactly its TTL, and the holder stops when it ends). Default: a third of the lease's lifetime,
   * so two beats can fail before it expires, and work shorter than that makes no extra call.
   */
  heartbeatMs?: number | undefined;
  /** Timers (the database layer injects its runtime's); default `setTimeout`. */
  setTimer?: SetTimer | undefined;
  /** The holder's clock, ms (durations only are read from it). Default `performance.now()`. */
  now?: (() => number) | undefined;
  /**
   * When the call that was answered with `granted` was sent, on `now`'s clock: the lease ends, as
   * the holder counts, `granted.validForMs` after it. Default: now (the call just returned).
   */
  sentAt?: number | undefined;
  /**
   * The lease ended while the work ran: the coordinator refused a renewal (expired, reaped,
   * revoked), or no renewal succeeded before the lease's end on the holder's own clock. Called once;
   * the heartbeat has stopped.
   */
  onLost?: ((error: LeaseError) => void) | undefined;
  /** A renewal could not be made (coordinator unreachable); the next beat tries again. */
  onError?: ((error: unknown) => void) | undefined;
  /**
   * The lease is a grant from the queue not claimed yet (it lives the client's claim window, see
   * `LeasesOptions.claimMs`): the first beat, `inMs` after the grant arrived (default: a third of
   * the way into that window), is its claim — it renews the lease to `ttlMs` (undefined: the pool's
   * TTL) — also when renewal is off. Work that ends sooner makes no claim call: its release is all
   * the coordinator hears.
   */
  claim?: HeartbeatClaim | undefined;
}

/** See `HeartbeatOptions.claim`. */
export interface HeartbeatClaim {
  ttlMs: number | undefined;
  inMs?: number | undefined;
}

/** A running heartbeat: the lease as last renewed, and the switch that stops it. */
export interface Heartbeat {
  readonly lease: LeaseGrant;
  /** Renewals that succeeded so far. */
  readonly beats: number;
  /**
   * Throws `LEASE_LOST` when the lease has ended (also when the holder's own clock says so and no
   * timer has run yet: an event loop that stalls past the end wakes here first). Call it before
   * sending anything the lease pays for.
   */
  check(): void;
  stop(): void;
}

const systemTimer: SetTimer = (fn, ms) => {
  const id = setTimeout(fn, ms);
  return () => clearTimeout(id);
};

const systemNow = () => performance.now();

/** Codes that mean the coordinator no longer counts the lease: renewing again cannot help. */
const LOST = new Set(["LEASE_EXPIRED", "LEASE_NOT_FOUND", "STALE_FENCE", "LEASE_LOST"]);

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
 * How long a lease lasts from the send time of the call that answered it: `validForMs`, or, from an
 * older coordinator, the lifetime it was granted or renewed with.
 *
 * @example
 * validFor({ grantedAt: 0, expiresAt: 1500, validForMs: 1400 } as LeaseGrant) // 1400
 */
export function validFor(lease: LeaseGrant, renewedForMs?: number): number {
  return lease.validForMs ?? renewedForMs ?? lease.expiresAt - lease.grantedAt;
}

/** A lease's lifetime from its grant (or last renewal), ms. */
function lifetimeOf(lease: LeaseGrant): number {
  return Math.max(1, lease.expiresAt - lease.grantedAt);
}

/**
 * How long before the lease's end, as the holder counts it, the holder stops: time for the cancel
 * and the close to reach the database before the coordinator may grant the slot again (and for
 * clock rates, which drift by parts per million). A fifth of the lifetime, at most 250 ms.
 *
 * @example
 * stopMarginMs(1500) // 250
 */
export function stopMarginMs(lifetimeMs: number): number {
  return Math.min(250, Math.floor(lifetimeMs / 5));
}

/**
 * Keeps a lease alive while its holder is alive, and ends it when it cannot: renews it by its own
 * lifetime every `heartbeatMs`, and keeps its own clock — the lease ends, as the holder counts, a
 * lifetime after the *send* time of the last call that succeeded (the grant or a renewal), less
 * {@link stopMarginMs}. Past that, or when the coordinator refuses a renewal, `onLost` is called
 * once and the heartbeat stops: the holder must stop using the connection (cancel, close) before
 * it gives the slot back. A holder whose request was cancelled runs no timers, so its lease is
 * renewed no more and comes back within one lifetime of its last beat.
 *
 * @example
 * const sentAt = performance.now();
 * const beat = heartbeat(leases, await leases.acquire(), { sentAt, onLost: () => controller.abort() });
 * try { beat.check(); await longQuery(controller.signal); } finally { beat.stop(); await leases.release(beat.lease); }
 */
export function heartbeat(leases: Renewer, granted: LeaseGrant, options: HeartbeatOptions = {}): Heartbeat {
  const fixedMs =
    options.heartbeatMs === undefined ? undefined : checkInt("heartbeatMs", options.heartbeatMs, 0, BOUNDS.leaseTtlMs);
  const setTimer = options.setTimer ?? systemTimer;
  const now = options.now ?? systemNow;
  const sentAt = options.sentAt ?? now();
  let everyMs = fixedMs ?? defaultHeartbeatMs(granted);
  let current = granted;
  // Unclaimed, the lease lives the claim window: the claim asks for the full TTL, and comes early enough.
  let claiming = options.claim !== undefined;
  const ttlMs = options.claim ? options.claim.ttlMs : lifetimeOf(granted);
  // When the lease ends as this holder counts: only a renewal that succeeds moves it.
  // The margin follows the lease's own lifetime from its grant, not the wait before it: a short
  // claim window after a long wait keeps a short margin.
  let endsAt = sentAt + validFor(granted) - stopMarginMs(Math.min(validFor(granted), lifetimeOf(granted)));
  let beats = 0;
  let failures = 0;
  let stopped = false;
  let lost: LeaseError | undefined;
  let cancelBeat: () => void = () => {};
  let cancelEnd: () => void = () => {};
  const lose = (error: LeaseError) => {
    if (stopped) return;
    stopped = true;
    cancelBeat();
    cancelEnd();
    lost = leaseLost(error);
    options.onLost?.(lost);
  };
  const expired = () =>
    new LeaseError("LEASE_EXPIRED", "No renewal succeeded before the lease ended, as its holder counts time");
  const watchEnd = () => {
    cancelEnd();
    // A timer may fire early by a millisecond or late by a stall; it looks at the clock either way.
    const onEnd = () => (now() >= endsAt ? lose(expired()) : watchEnd());
    cancelEnd = setTimer(onEnd, Math.max(1, Math.ceil(endsAt - now())));
  };
  const beat = () => {
    const renewSentAt = now();
    leases.renew(current, ttlMs).then(
      (renewed) => {
        if (stopped) return;
        // Late: the lease ended on this clock before the answer came — the coordinator may agree any moment.
        if (now() >= endsAt) return lose(expired());
        current = renewed;
        beats++;
        const lifetimeMs = validFor(renewed, ttlMs);
        endsAt = Math.max(endsAt, renewSentAt + lifetimeMs - stopMarginMs(lifetimeMs));
        watchEnd();
        if (claiming) {
          claiming = false;
          everyMs = fixedMs ?? Math.max(1, Math.floor(lifetimeMs / 3));
        }
        schedule();
      },
      (error: unknown) => {
        if (stopped) return;
        if (isLeaseError(error) && LOST.has(error.code)) return lose(error);
        failures++;
        options.onError?.(error);
        schedule();
      },
    );
  };
  const schedule = () => {
    const claimBy = options.claim?.inMs ?? defaultHeartbeatMs(granted);
    const delayMs = claiming ? (everyMs > 0 ? Math.min(everyMs, claimBy) : claimBy) : everyMs;
    // A claim is sent however soon it is due (a beat of 0 ms is renewal turned off); one that failed
    // is tried again no sooner than 25 ms later.
    if (claiming) cancelBeat = setTimer(beat, failures > 0 ? Math.max(25, delayMs) : delayMs);
    else if (delayMs > 0) cancelBeat = setTimer(beat, delayMs);
  };
  watchEnd();
  schedule();
  return {
    get lease() {
      return current;
    },
    get beats() {
      return beats;
    },
    check() {
      if (!stopped && now() >= endsAt) lose(expired());
      if (lost) throw lost;
    },
    stop() {
      stopped = true;
      cancelBeat();
      cancelEnd();
    },
  };
}

/**
 * The error a lease's scope is aborted with when the lease ends while the work runs: `LEASE_LOST`,
 * the coordinator's refusal (or the holder's own clock) as its cause. The work was cut off, so
 * whatever it had sent may have run.
 *
 * @example
 * controller.abort(leaseLost(error));
 */
export function leaseLost(cause: LeaseError): LeaseError {
  if (cause.code === "LEASE_LOST" && cause.executed !== undefined) return cause;
  return new LeaseError("LEASE_LOST", `The lease ended while the work ran: ${cause.message}`, {
    cause,
    retryAfterMs: 0,
    executed: "maybe",
  });
}
