import { AsyncLocalStorage } from "node:async_hooks";
import { type AcquireOptions, type LeaseGrant, BOUNDS, LeaseError, checkInt } from "../core/index.ts";
import { type LeaseTracer, watchLease } from "../tracing.ts";
import { type Heartbeat, type HeartbeatClaim, type SetTimer, heartbeat } from "./heartbeat.ts";

/** Registers background work that must finish even after the response is sent (`ctx.waitUntil`). */
export type WaitUntil = (promise: Promise<unknown>) => void;

/** An acquire as application code makes it: the coordinator's options plus a way to give up. */
export interface ClientAcquireOptions extends AcquireOptions {
  /**
   * Gives up the wait when aborted (Workers: `request.signal`; Node: a closed request's signal,
   * `AbortSignal.timeout(ms)`): the call rejects with `signal.reason` at once, the local adapter
   * withdraws the waiter at once, and a slot granted after the abort is released as soon as it
   * arrives. A caller whose request is cancelled outright runs no code at all: the short lease TTL
   * and the heartbeat bound that case, not this.
   */
  signal?: AbortSignal | undefined;
}

/** What the lease lifecycle needs of a lease client: `Leases` and `ShardedLeases` both are one. */
export interface HoldingClient {
  /** The pool's name; leases of one pool may not be nested. Unnamed clients count as any pool. */
  readonly pool?: string | undefined;
  /**
   * Acquires; `claim: "later"` leaves a grant from the queue unclaimed (living the client's claim
   * window, see {@link needsClaim}) for the holder's heartbeat to claim, instead of renewing it before returning.
   */
  acquire(options?: ClientAcquireOptions, claim?: "now" | "later"): Promise<LeaseGrant>;
  /** The client's claim window, ms (`LeasesOptions.claimMs`); undefined: its grants need no claim. */
  readonly claimMs?: number | undefined;
  /**
   * When a lease it returned unclaimed must be claimed, ms after its answer arrived; undefined: no
   * claim. Without it, a grant from the queue ({@link needsClaim}) is claimed a third of the way into `claimMs`.
   */
  claimDueMs?(lease: LeaseGrant): number | undefined;
  release(lease: LeaseGrant): Promise<void>;
  /**
   * Gives a finished lease back when nobody needs the answer; never throws. The lifecycle uses it
   * when the client has it (`Leases`: carried by the isolate's next acquire), else `release`.
   */
  giveBack?(lease: LeaseGrant): Promise<void>;
  renew(lease: LeaseGrant, ttlMs?: number): Promise<LeaseGrant>;
  /** Spans of the wait and the hold of every lease taken through the lifecycle (src/tracing.ts). */
  readonly tracer?: LeaseTracer | undefined;
}

/** Cleanups registered while a lease is held; they run, in order, before the slot is given back. */
export interface LeaseScope {
  readonly lease: LeaseGrant;
  /** Runs `cleanup` before the release, e.g. closing the connection the lease pays for. */
  beforeRelease(cleanup: () => Promise<unknown> | unknown): void;
  /**
   * Aborted, with a `LEASE_LOST` error, when the lease ends while the work runs: the coordinator
   * refused a renewal (an operator revoked it, it expired), or no renewal succeeded before its end
   * on the holder's own clock. Cancel what runs on the connection: the slot is given back once the
   * work has settled and the cleanups (closing the connection) have run.
   */
  readonly signal: AbortSignal;
  /**
   * Throws the `LEASE_LOST` error when the lease has ended — also when the holder's own clock says
   * so and no timer has run yet (an event loop that stalled past the end). Call it before sending
   * anything the lease pays for.
   */
  assertHeld(): void;
}

/**
 * Whether `lease` is a grant from the queue not claimed yet: it lives exactly the claim window.
 * (The core caps the window by the TTL: a lease whose TTL is shorter needs no claim; one whose TTL
 * equals the window is claimed all the same, harmlessly.)
 *
 * @example
 * needsClaim({ grantedAt: 0, expiresAt: 500 } as LeaseGrant, 500) // true
 */
export function needsClaim(lease: LeaseGrant, claimMs: number | undefined): boolean {
  return claimMs !== undefined && lease.expiresAt - lease.grantedAt === claimMs;
}

/** The heartbeat's claim of a lease `client` returned unclaimed: when to send it, and the TTL it asks for. */
function claimOf(client: HoldingClient, lease: LeaseGrant, ttlMs: number | undefined): HeartbeatClaim | undefined {
  if (client.claimDueMs) {
    const inMs = client.claimDueMs(lease);
    return inMs === undefined ? undefined : { ttlMs, inMs };
  }
  return needsClaim(lease, client.claimMs) ? { ttlMs } : undefined;
}

/** A scope whose lease may be absent: no coordinator (`COORDINATOR=off`) or the safe mode's budget. */
export interface HeldScope extends Omit<LeaseScope, "lease"> {
  readonly lease: LeaseGrant | undefined;
}

/** How {@link holdLease} holds its lease; the entry points differ only in these. */
export interface HoldOptions extends ClientAcquireOptions {
  /** Runs the cleanups and the release in the background (registered before the wait begins). */
  waitUntil?: WaitUntil | undefined;
  /** Renewal period, ms; `0` = off. Default: a third of the lease's lifetime. */
  heartbeatMs?: number | undefined;
  /** The heartbeat's timers. Default `setTimeout`. */
  setTimer?: SetTimer | undefined;
  /** The holder's clock, ms, for the heartbeat (durations only). Default `performance.now()`. */
  now?: (() => number) | undefined;
  /** A renewal failed: the lease is gone (the scope's signal is aborted too) or the coordinator was unreachable. */
  onRenewError?: ((error: unknown) => void) | undefined;
  /**
   * The acquire failed: return to run the work without a lease (the returned function is called
   * once the work and its cleanups are done), or throw. Default: throw the acquire's error.
   */
  withoutLease?: ((error: unknown) => () => void) | undefined;
  /** The frame (from {@link leaseFrame}) the caller's own code runs in, marked held while the lease is. */
  frame?: LeaseFrame | undefined;
}

/**
 * Where a piece of work runs: which pool's lease it holds (undefined: none yet), and the work that
 * called it. Carried by `AsyncLocalStorage`, so a second acquire from the same pool made anywhere
 * inside the work — however deep — is seen.
 */
export interface LeaseFrame {
  pool: string | undefined;
  readonly parent: LeaseFrame | undefined;
}

const frames = new AsyncLocalStorage<LeaseFrame>();

/**
 * A new frame inside the current one: hand it to {@link holdLease} (`frame`) and run the caller's
 * code with {@link runInFrame} when the lease is taken lazily, after the code has started (Hono).
 *
 * @example
 * const frame = leaseFrame(); await runInFrame(frame, next);
 */
export function leaseFrame(): LeaseFrame {
  return { pool: undefined, parent: frames.getStore() };
}

/**
 * Runs `fn` in `frame`: a lease held in that frame makes a nested acquire from its pool fail fast.
 *
 * @example
 * await runInFrame(frame, () => next());
 */
export function runInFrame<T>(frame: LeaseFrame, fn: () => T): T {
  return frames.run(frame, fn);
}

/** The pool of a lease already held by this work that a new acquire from `pool` would wait behind. */
function heldBy(pool: string): string | undefined {
  for (let frame = frames.getStore(); frame; frame = frame.parent) {
    const held = frame.pool;
    // An unnamed client cannot say which pool it is: it is taken to be the same as any other.
    if (held !== undefined && (held === pool || held === "" || pool === "")) return held || pool;
  }
  return undefined;
}

/**
 * The error of a nested acquire: the work holds a lease of this pool and asks for another.
 *
 * @example
 * throw nestedLease("main");
 */
export function nestedLease(pool: string): LeaseError {
  const name = pool ? `\`${pool}\`` : "an unnamed pool";
  return new LeaseError(
    "NESTED_LEASE",
    `This work already holds a lease of ${name} and asked for another of the same pool: under load every slot can be held ` +
      "by work waiting for a second one, and none is ever freed. Use the connection you hold (pass it, or the transaction, " +
      "down), or take one lease around both; if these are two different pools, give each client its pool name (`pool`).",
  );
}

/**
 * The one lease lifecycle — hold a lease around this work: acquire (with its deadline and signal),
 * keep it alive with a heartbeat while `work` runs, run the cleanups (close the connection the
 * lease pays for) and then release, in `waitUntil` when given (registered before the wait, so a
 * slot granted late is still given back) or awaited. Failures of the acquire leave as the
 * client's `LeaseError`s; a second acquire from the same pool inside `work` fails at once with
 * `NESTED_LEASE`. `Leases.withLease`, the database layer and the Hono middleware all run on it.
 * With no client (`COORDINATOR=off`) the work runs without a lease, cleanups all the same.
 *
 * @example
 * const rows = await holdLease(leases, async ({ beforeRelease }) => {
 *   const sql = connect(); beforeRelease(() => sql.end()); return sql`select 1`;
 * }, { waitUntil: (p) => ctx.waitUntil(p), signal: request.signal });
 */
export async function holdLease<T>(
  client: HoldingClient | undefined,
  work: (scope: HeldScope) => Promise<T> | T,
  options: HoldOptions = {},
): Promise<T> {
  const pool = client?.pool ?? "";
  if (client) {
    const held = heldBy(pool);
    if (held !== undefined) throw nestedLease(held);
  }
  const { waitUntil, signal } = options;
  // Checked before anything is acquired: a bad option must not leave a lease behind.
  if (options.heartbeatMs !== undefined) checkInt("heartbeatMs", options.heartbeatMs, 0, BOUNDS.leaseTtlMs);
  const now = options.now ?? (() => performance.now());
  // Registered before the wait (see `waitUntil`); settled once the slot is given back.
  let settle: (done: Promise<void>) => void = () => {};
  if (waitUntil) waitUntil(new Promise<void>((resolve) => (settle = (done) => void done.then(resolve, resolve))));
  let lease: LeaseGrant | undefined;
  let withoutLease: (() => void) | undefined;
  // The lease ends, as this holder counts, its `validForMs` after this moment (see `heartbeat`).
  const sentAt = now();
  const watch = client && watchLease(client.tracer, pool, now);
  if (client) {
    try {
      lease = await client.acquire(options, "later");
      watch?.granted(lease);
    } catch (error) {
      watch?.refused(error);
      try {
        if (signal?.aborted || !options.withoutLease) throw error;
        withoutLease = options.withoutLease(error);
      } catch (failure) {
        settle(Promise.resolve());
        throw failure;
      }
    }
  }
  const cleanups: Array<() => Promise<unknown> | unknown> = [];
  const lost = new AbortController();
  let beat: Heartbeat | undefined;
  const frame = options.frame ?? leaseFrame();
  // From here on the lease is given back on every path, a throw included.
  try {
    // Granted after the caller gave up: nobody will use this slot.
    signal?.throwIfAborted();
    if (client && lease) {
      beat = heartbeat(client, lease, {
        heartbeatMs: options.heartbeatMs,
        setTimer: options.setTimer,
        now,
        sentAt,
        onLost: (error) => {
          watch?.lost(error);
          options.onRenewError?.(error);
          lost.abort(error);
        },
        onError: options.onRenewError,
        // Short work makes no claim call: the release is all the coordinator hears of it.
        claim: claimOf(client, lease, options.ttlMs),
      });
    }
    const held = beat;
    const assertHeld = held ? () => held.check() : () => {};
    if (lease) frame.pool = pool;
    const run = () =>
      work({ lease, beforeRelease: (cleanup) => void cleanups.push(cleanup), signal: lost.signal, assertHeld });
    return await frames.run(frame, () => (lease && watch ? watch.hold(run) : run()));
  } finally {
    // Code the work left running is no longer inside a lease.
    frame.pool = undefined;
    beat?.stop();
    // The connection first, then the slot: the database never counts more connections than leases.
    let markClosed: () => void = () => {};
    const closed = new Promise<void>((resolve) => (markClosed = resolve));
    const done = finish(client, beat?.lease ?? lease, cleanups, () => {
      withoutLease?.();
      markClosed();
    });
    if (watch) void done.then(() => watch.done());
    if (waitUntil) settle(done);
    // A lost lease's caller is told once its connection is closed: the release may not reach a
    // coordinator that is away, and the slot comes back at its expiry anyway.
    else if (lost.signal.aborted) await closed;
    else await done;
  }
}

// Runs the cleanups (closing the connection), says so, then gives the slot back; never throws.
// With no cleanup to wait for, the release is sent in the same turn.
async function finish(
  client: HoldingClient | undefined,
  lease: LeaseGrant | undefined,
  cleanups: Array<() => Promise<unknown> | unknown>,
  onClosed: () => void,
): Promise<void> {
  for (const cleanup of cleanups) {
    try {
      await cleanup();
    } catch {
      // A failed cleanup must not keep the slot: the connection is gone either way.
    }
  }
  onClosed();
  await giveBack(client, lease);
}

/** Gives the slot back; never throws. */
async function giveBack(client: HoldingClient | undefined, lease: LeaseGrant | undefined): Promise<void> {
  if (!client || !lease) return;
  if (client.giveBack) return await client.giveBack(lease);
  try {
    await client.release(lease);
  } catch {
    // Already expired or reaped: the coordinator has taken the slot back itself.
  }
}
