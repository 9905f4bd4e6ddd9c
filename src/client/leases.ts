import {
  type AcquireOptions,
  type AcquireResult,
  type Failure,
  type LeaseGrant,
  type LeaseRef,
  type PoolStats,
  type ReleaseResult,
  type Result,
  BOUNDS,
  LeaseError,
  checkInt,
  isLeaseError,
  leaseRef,
  requestFields,
} from "../core/index.ts";
import type { Coordinator } from "../engine/coordinator.ts";
import type { LeaseTracer } from "../tracing.ts";
import { Coalescer } from "./coalesce.ts";
import { type LocalShed, localShedOf } from "./local-shed.ts";
import { RoundTrips, CLAIM_WINDOW, claimDelayMs } from "./round-trips.ts";
import type { ReleaseOutbox } from "./outbox.ts";
import {
  type ClientAcquireOptions,
  type HoldingClient,
  type LeaseScope,
  type WaitUntil,
  holdLease,
  needsClaim,
} from "./hold.ts";

export type { ClientAcquireOptions, LeaseScope, WaitUntil } from "./hold.ts";

/**
 * What a coordinator answers to a lease client: the lease calls of the one interface the Durable
 * Object and the local Postgres coordinator both implement (`CoordinatorBackend`), so application
 * code is the same on Workers, Node and Deno.
 */
export type { Coordinator } from "../engine/coordinator.ts";

/**
 * What application code and the database layer use: `Leases` (one coordinator) and
 * `ShardedLeases` (a pool split across coordinator objects) both implement it.
 */
export interface LeaseClient extends HoldingClient {
  stats(): Promise<PoolStats>;
}

export interface WithLeaseOptions extends ClientAcquireOptions {
  /**
   * Runs the release in the background (Workers: `ctx.waitUntil`), off the response path.
   * Without it, `withLease` awaits the release before returning. Registered before the wait
   * begins: in production, work registered with `waitUntil` keeps running for up to 30 s after
   * the client disconnects, so a slot granted late is still released rather than left to its TTL.
   */
  waitUntil?: WaitUntil | undefined;
  /**
   * Renews the lease every this many ms while `fn` runs; `0` turns renewal off. Default: a third
   * of the lease's lifetime (`LEASE_TTL_MS`, 1500 ms by default: a beat every 500 ms), so work
   * shorter than that makes no extra call, and a holder that vanishes gives its slot back within
   * one lifetime of its last beat.
   */
  heartbeatMs?: number | undefined;
}

/**
 * How long an acquire's answer waited at the coordinator, ms: a grant is valid `validForMs` from
 * when its call arrived and lives `expiresAt − grantedAt` from its grant, so the difference is its
 * wait (0 when granted at once). Undefined when not known: a grant from an older coordinator, a
 * refusal after a wait.
 */
function queuedFor(result: AcquireResult): number | undefined {
  if (!result.ok) return result.code === "QUEUE_FULL" ? 0 : undefined;
  const { validForMs, expiresAt, grantedAt } = result.lease;
  return validForMs === undefined ? undefined : Math.max(0, validForMs - (expiresAt - grantedAt));
}

function toError(failure: Failure): LeaseError {
  return new LeaseError(failure.code, failure.message, { retryAfterMs: failure.retryAfterMs });
}

function unavailable(cause: unknown): LeaseError {
  // A call that threw rather than answered: the coordinator restarted, was unreachable or
  // overloaded. Safe to retry: a waiter whose call failed holds no slot it knows of, and a slot it
  // was granted without hearing of it comes back at its TTL.
  return new LeaseError("COORDINATOR_UNAVAILABLE", "The lease coordinator could not be reached", {
    cause,
    retryAfterMs: 100,
  });
}

async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw isLeaseError(error) ? error : unavailable(error);
  }
}

/** A coordinator deployed from an older leasegate (a separate Worker) has no batch methods. */
function isMissingMethod(error: unknown): boolean {
  return error instanceof Error && /does not implement the method/.test(error.message);
}

export interface LeasesOptions {
  /** Default holder of this client's leases, shown to operators. */
  holder?: string | undefined;
  /**
   * Coalesce this client's concurrent acquires and releases into batch calls (default `true`,
   * used when the coordinator has batch methods). A lone call is still a single call.
   */
  coalesce?: boolean | undefined;
  /**
   * A lease granted after a wait lives this long, ms, until its holder claims it (renews it to
   * its TTL). `acquire` claims before it returns; `withLease` (and everything built on it) lets
   * the heartbeat's first beat be the claim — a third of the way into the window, or sooner when
   * the round trip asks for it — so work that ends sooner makes no claim call. A caller that
   * vanished while it waited (its request cancelled) never claims, so that slot comes back this
   * soon instead of at the lease TTL. A lease granted at once is never claimed.
   *
   * Default: follows the measured round trips to the coordinator — of this isolate's clients of
   * the same `pool` name, or of this client when unnamed — four of them (the smoothed round trip
   * plus four deviations), at least 500 ms and at most 1000 ms; 500 until the first is measured
   * (see `CLAIM_WINDOW`). A number fixes the window; `0` sends no claim, and
   * grants from the queue live their full TTL.
   */
  claimMs?: number | undefined;
  /**
   * Refuse acquires in this isolate, without a coordinator call, while the coordinator refuses most
   * of them (see `LocalShed`): of the acquires of a priority and tenant answered in the last 2 s,
   * once grants fall below `1/K` of them, the coordinator is sent about `K` times what it grants and
   * the surplus is answered at once with the code and Retry-After of the coordinator's last refusal. `true`
   * (default): K = 2; a number: K (1 to 10); `false`: every acquire goes to the coordinator. Shared
   * per pool name in an isolate, like the round trips.
   */
  localShed?: boolean | number | undefined;
  /**
   * The pool's name (one limit, one queue): work holding a lease of this pool that asks for
   * another of it fails at once with `NESTED_LEASE`. Unnamed clients count as any pool.
   */
  pool?: string | undefined;
  /**
   * Keeps background releases alive (Workers: `ctx.waitUntil`): a slot granted after its caller
   * gave up (`signal`) is released as soon as it arrives.
   */
  waitUntil?: WaitUntil | undefined;
  /**
   * Where `withLease` (and everything built on it) leaves a finished lease's release for the next
   * acquire to carry (shared by an isolate's requests; see `ReleaseOutbox`). Without it each
   * release is a call of its own. Needs `waitUntil`: a release waits up to the outbox's
   * `carryMs` for a ride, in the background.
   */
  outbox?: ReleaseOutbox | undefined;
  /**
   * An OpenTelemetry tracer (`trace.getTracer("my-app")`): every lease taken through `withLease`
   * and the database layer gets a `leasegate.wait` and a `leasegate.hold` span (docs/tracing.md).
   */
  tracer?: LeaseTracer | undefined;
}

/**
 * Round trips measured per pool name in this isolate (or process): `workerPool` makes a client per
 * request, which starts from what its isolate's earlier requests measured. A client with no pool
 * name keeps its own.
 */
const tripsByPool = new Map<string, RoundTrips>();

function roundTripsOf(pool: string | undefined): RoundTrips {
  if (pool === undefined) return new RoundTrips();
  let trips = tripsByPool.get(pool);
  if (!trips) {
    trips = new RoundTrips();
    tripsByPool.set(pool, trips);
  }
  return trips;
}

/** The claim window before any round trip was measured, and `ShardedLeases`' fixed default; see `LeasesOptions.claimMs`. */
export const DEFAULT_CLAIM_MS = CLAIM_WINDOW.initialMs;

/**
 * Application-facing leases for one pool: `acquire`, `release`, `renew` throw `LeaseError`s with
 * stable codes; `withLease` holds a slot exactly as long as a piece of work.
 *
 * @example
 * const leases = new Leases(env.COORDINATOR_DO.getByName("main"), { holder: requestId });
 * const rows = await leases.withLease(() => sql`select 1`, { waitUntil: ctx.waitUntil.bind(ctx) });
 */
export class Leases implements LeaseClient {
  readonly pool: string | undefined;
  readonly #coordinator: Coordinator;
  readonly #waitUntil: WaitUntil | undefined;
  readonly #holder: string;
  readonly #outbox: ReleaseOutbox | undefined;
  /** A fixed claim window (undefined: none), or `"measured"`: from {@link RoundTrips}. */
  readonly #claim: number | undefined | "measured";
  readonly #trips: RoundTrips;
  readonly #shed: LocalShed | undefined;
  /** Grants from the queue returned unclaimed (`claim: "later"`), with the window each was asked with. */
  readonly #unclaimed = new WeakMap<LeaseGrant, number>();
  readonly tracer: LeaseTracer | undefined;
  #acquires: Coalescer<AcquireOptions, AcquireResult | null> | undefined;
  #releases: Coalescer<LeaseRef, ReleaseResult | null> | undefined;

  constructor(coordinator: Coordinator, options: LeasesOptions = {}) {
    this.#coordinator = coordinator;
    this.#holder = options.holder ?? "";
    this.pool = options.pool;
    this.#waitUntil = options.waitUntil;
    this.#claim = options.claimMs === undefined ? "measured" : claimWindow(options.claimMs);
    this.#trips = roundTripsOf(options.pool);
    this.#shed = localShedOf(options.pool, options.localShed);
    this.tracer = options.tracer;
    this.#outbox = options.waitUntil ? options.outbox : undefined;
    const { acquireMany, releaseMany } = coordinator;
    if (options.coalesce === false || typeof acquireMany !== "function" || typeof releaseMany !== "function") return;
    // Every property of a Durable Object stub is a function: whether the object really has the
    // batch methods shows in its first answer (see #batch).
    this.#acquires = new Coalescer(
      (request) => coordinator.acquire(request),
      (requests) => this.#batch(requests, () => coordinator.acquireMany!(requests)),
    );
    this.#releases = new Coalescer(
      (ref) => coordinator.release(ref),
      (refs) => this.#batch(refs, () => coordinator.releaseMany!(refs)),
    );
  }

  /**
   * The claim window this client asks for now, ms (see `LeasesOptions.claimMs`); undefined: none.
   *
   * @example
   * new Leases(stub).claimMs // 500 until a round trip is measured
   */
  get claimMs(): number | undefined {
    return this.#claim === "measured" ? this.#trips.claimWindowMs() : this.#claim;
  }

  /**
   * When a lease this client returned unclaimed (`acquire(options, "later")`) must be claimed, ms
   * after its answer arrived: early enough for the claim to arrive inside its window given the
   * measured round trip. Undefined: it needs no claim.
   *
   * @example
   * const lease = await leases.acquire({}, "later"); leases.claimDueMs(lease) // 33, or undefined
   */
  claimDueMs(lease: LeaseGrant): number | undefined {
    const windowMs = this.#unclaimed.get(lease);
    return windowMs === undefined ? undefined : claimDelayMs(windowMs, this.#trips.boundMs);
  }

  /**
   * Runs a call and counts its round trip: the time to its answer, less what `waited` says the
   * answer spent waiting at the coordinator (undefined: unknown, not counted).
   */
  async #timed<T>(send: () => Promise<T>, waited: (answer: T) => number | undefined = () => 0): Promise<T> {
    const sentAt = performance.now();
    const answer = await send();
    const waitedMs = waited(answer);
    if (waitedMs !== undefined) this.#trips.record(performance.now() - sentAt - waitedMs);
    return answer;
  }

  /**
   * One batch call: an answer per item, in order; `null` for an item to send on its own (a request
   * not granted at once, or every item once the coordinator turned out to have no batch methods —
   * an older deployment — after which this client makes single calls only).
   */
  async #batch<I, O>(
    items: I[],
    send: () => Promise<Result<{ results: Array<O | null> }>>,
  ): Promise<Array<O | Failure | null>> {
    if (!this.#acquires) return items.map(() => null);
    try {
      const answer = await send();
      return answer.ok ? answer.results : items.map(() => answer);
    } catch (error) {
      if (!isMissingMethod(error)) throw error;
      this.#acquires = this.#releases = undefined;
      return items.map(() => null);
    }
  }

  /**
   * Waits for a slot; throws `QUEUE_FULL`, `ACQUIRE_TIMEOUT` or `COORDINATOR_UNAVAILABLE`. A slot
   * granted from the queue is claimed before this returns; with `claim: "later"` it comes back
   * unclaimed, living `claimMs` until the caller renews it (a `heartbeat` with `claim` does).
   *
   * @example
   * const lease = await leases.acquire({ waitMs: 2000 });
   */
  async acquire(options: ClientAcquireOptions = {}, claim: "now" | "later" = "now"): Promise<LeaseGrant> {
    const signal = options.signal;
    signal?.throwIfAborted();
    const windowMs = this.claimMs;
    const request = coordinatorRequest(options, this.#holder, windowMs);
    const refusal = this.#shed?.refuse(request);
    if (refusal) throw refusal;
    const sent = this.#timed(() => this.#send(request, signal), queuedFor);
    const result = signal
      ? await untilAborted(sent, signal, (late) => late.ok && this.#releaseLate(late.lease))
      : await sent;
    this.#shed?.answered(request, result);
    if (!result.ok) throw toError(result);
    if (claim === "later") {
      if (windowMs !== undefined && needsClaim(result.lease, windowMs)) this.#unclaimed.set(result.lease, windowMs);
      return result.lease;
    }
    return await claimNow(result.lease, windowMs, (lease) => this.renew(lease, options.ttlMs));
  }

  /** Releases a lease nobody will use, in the background. */
  #releaseLate(lease: LeaseGrant): void {
    const done = this.release(lease).catch(() => {});
    this.#waitUntil?.(done);
  }

  async #send(request: AcquireOptions, signal?: AbortSignal): Promise<AcquireResult> {
    const coordinator = this.#coordinator;
    // The releases waiting in the outbox ride along; a call that fails sends them on their own.
    const carried = this.#outbox?.take() ?? [];
    const sent = carried.length === 0 ? request : { ...request, release: carried };
    try {
      if (signal && coordinator.abortable === true) return await call(() => coordinator.acquire(sent, signal));
      const acquires = this.#acquires;
      // Alone: a single call. In a batch: granted if a slot is free now, else queued by a call of
      // its own (the batch delivered the releases).
      if (!acquires) return await call(() => coordinator.acquire(sent));
      return (await call(() => acquires.call(sent))) ?? (await call(() => coordinator.acquire(request)));
    } catch (error) {
      if (carried.length > 0) this.#waitUntil?.(this.#releaseAll(carried));
      throw error;
    }
  }

  /**
   * Gives a finished lease back without waiting for an answer anyone reads: with an outbox, the
   * release waits up to its `carryMs` for an acquire of this isolate to carry it, then goes out on
   * its own (with any others still waiting); without one, it is a `release`. Never throws: a lease
   * the coordinator no longer counts is already back.
   *
   * @example
   * ctx.waitUntil(leases.giveBack(lease));
   */
  async giveBack(lease: LeaseGrant): Promise<void> {
    const outbox = this.#outbox;
    if (!outbox) return await this.release(lease).catch(() => {});
    const ref = leaseRef(lease);
    outbox.add(ref);
    await new Promise((resolve) => setTimeout(resolve, outbox.carryMs));
    if (outbox.has(ref)) await this.#releaseAll(outbox.take());
  }

  /**
   * Sends releases nobody waits on (together, coalesced into a batch). Never throws: a lease whose
   * release cannot be sent comes back at its TTL, as for any holder that vanished.
   */
  async #releaseAll(refs: LeaseRef[]): Promise<void> {
    await Promise.all(refs.map((ref) => this.#release(ref).catch(() => {})));
  }

  /**
   * Gives the slot back (with the lease's expiry and token: a restarted coordinator then knows a
   * late heartbeat of it must not bring it back); throws `LEASE_EXPIRED`, `LEASE_NOT_FOUND` or
   * `STALE_FENCE` when the coordinator no longer counts this lease (the slot is not freed twice).
   *
   * @example
   * await leases.release(lease);
   */
  async release(lease: LeaseGrant): Promise<void> {
    const result = await this.#release(leaseRef(lease));
    if (!result.ok) throw toError(result);
  }

  async #release(ref: LeaseRef): Promise<ReleaseResult> {
    const releases = this.#releases;
    return await this.#timed(
      async () =>
        (releases && (await call(() => releases.call(ref)))) ?? (await call(() => this.#coordinator.release(ref))),
    );
  }

  /**
   * Extends the lease; returns the renewed lease with its new `expiresAt` (and token). Throws
   * `LEASE_LOST` when an operator revoked it: stop the work, then release it.
   *
   * @example
   * lease = await leases.renew(lease, 30_000);
   */
  async renew(lease: LeaseGrant, ttlMs?: number): Promise<LeaseGrant> {
    const result = await this.#timed(() => call(() => this.#coordinator.renew(leaseRef(lease), ttlMs)));
    if (!result.ok) throw toError(result);
    return result.lease;
  }

  /** The pool's live state for operators. */
  async stats(): Promise<PoolStats> {
    return await call(() => this.#coordinator.stats());
  }

  /**
   * Acquires, runs `fn` while a heartbeat renews the lease, and releases in `finally` — also when
   * `fn` throws. With `waitUntil` the cleanups and the release run in the background, so the
   * response does not wait for them. A caller that vanishes (its request cancelled: no `finally`
   * runs) stops renewing, so its slot comes back within one lease lifetime.
   *
   * @example
   * const user = await leases.withLease(async ({ beforeRelease }) => {
   *   const sql = connect(); beforeRelease(() => sql.end());
   *   return (await sql`select * from users where id = ${id}`)[0];
   * }, { waitUntil: (p) => ctx.waitUntil(p), signal: request.signal });
   */
  async withLease<T>(fn: (scope: LeaseScope) => Promise<T> | T, options: WithLeaseOptions = {}): Promise<T> {
    // No `withoutLease` and a client: the scope always has its lease.
    return holdLease(this, (scope) => fn(scope as LeaseScope), options);
  }
}

/**
 * What a client sends the coordinator for an acquire: the caller's fields as declared once
 * (`ACQUIRE_REQUEST_KEYS`; never its signal, nor a `shard` or `release` of its own), its holder or
 * the client's, and the client's claim window (not the caller's).
 *
 * @example
 * coordinatorRequest({ waitMs: 100 }, "req-1", 500) // { holder: "req-1", waitMs: 100, claimMs: 500 }
 */
export function coordinatorRequest(
  options: AcquireOptions,
  holder: string,
  claimMs: number | undefined,
): AcquireOptions {
  const { claimMs: _callers, ...fields } = requestFields(options);
  const request: AcquireOptions = { ...fields, holder: options.holder ?? holder };
  if (claimMs !== undefined) request.claimMs = claimMs;
  return request;
}

/**
 * Waits for `running`, or rejects with `signal.reason` at the abort; a value that arrives after
 * the abort goes to `late` (a granted slot nobody will use: give it back now, not at its TTL).
 *
 * @example
 * const result = await untilAborted(send(request), signal, (r) => r.ok && giveBack(r.lease));
 */
export function untilAborted<T>(running: Promise<T>, signal: AbortSignal, late: (value: T) => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let aborted = false;
    const onAbort = () => {
      aborted = true;
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    running.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (aborted) late(value);
        else resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        if (!aborted) reject(error);
      },
    );
  });
}

/**
 * Claims a lease granted from the queue: such a grant lives exactly `claimMs` (the core caps it by
 * the TTL: a lease whose TTL is shorter lives its TTL either way and needs no claim), so it is
 * renewed to its full lifetime before anyone uses it. A lease granted at once is returned as is.
 * A claim the coordinator refuses (the window passed) is `ACQUIRE_TIMEOUT`.
 *
 * @example
 * const lease = await claimNow(granted, 500, (l) => leases.renew(l));
 */
export async function claimNow<L extends LeaseGrant>(
  lease: L,
  claimMs: number | undefined,
  renew: (lease: L) => Promise<L>,
): Promise<L> {
  if (!needsClaim(lease, claimMs)) return lease;
  try {
    return await renew(lease);
  } catch (error) {
    if (!isLeaseError(error) || error.code === "COORDINATOR_UNAVAILABLE") throw error;
    throw new LeaseError("ACQUIRE_TIMEOUT", `A slot was granted but could not be claimed within ${claimMs} ms`, {
      retryAfterMs: 0,
      cause: error,
    });
  }
}

/**
 * The claim window of `LeasesOptions.claimMs`, validated: undefined when `0` (no claim).
 *
 * @example
 * claimWindow(undefined) // 500
 */
export function claimWindow(claimMs: number | undefined): number | undefined {
  const ms = claimMs ?? DEFAULT_CLAIM_MS;
  return ms === 0 ? undefined : checkInt("claimMs", ms, 0, BOUNDS.leaseTtlMs);
}
