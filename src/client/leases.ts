import {
  type AcquireManyResult,
  type AcquireOptions,
  type AcquireResult,
  type Failure,
  type LeaseGrant,
  type LeaseRef,
  type PoolStats,
  type ReleaseManyResult,
  type ReleaseResult,
  type RenewResult,
  type Result,
  type ShardRef,
  LeaseError,
  isLeaseError,
} from "../core/index.ts";
import { Coalescer } from "./coalesce.ts";

/**
 * What a coordinator answers: the Durable Object stub and the local Postgres coordinator both
 * implement it, so application code is the same on Workers, Node and Deno.
 */
export interface Coordinator {
  acquire(options?: AcquireOptions): Promise<AcquireResult>;
  release(ref: LeaseRef): Promise<ReleaseResult>;
  renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult>;
  /** `shard`: sent by a sharded client, so an object not yet used answers with its part of the limit. */
  stats(shard?: ShardRef): Promise<PoolStats>;
  /** Batches (the Durable Object has them): grants what is free now, `null` for the rest. */
  acquireMany?(requests: AcquireOptions[]): Promise<AcquireManyResult>;
  releaseMany?(refs: LeaseRef[]): Promise<ReleaseManyResult>;
}

/**
 * What application code and the database layer use: `Leases` (one coordinator) and
 * `ShardedLeases` (a pool split across coordinator objects) both implement it.
 */
export interface LeaseClient {
  acquire(options?: AcquireOptions): Promise<LeaseGrant>;
  release(lease: LeaseGrant): Promise<void>;
  renew(lease: LeaseGrant, ttlMs?: number): Promise<LeaseGrant>;
  stats(): Promise<PoolStats>;
}

/** Registers background work that must finish even after the response is sent (`ctx.waitUntil`). */
export type WaitUntil = (promise: Promise<unknown>) => void;

export interface WithLeaseOptions extends AcquireOptions {
  /**
   * Runs the release in the background (Workers: `ctx.waitUntil`), off the response path.
   * Without it, `withLease` awaits the release before returning.
   */
  waitUntil?: WaitUntil | undefined;
}

/** Cleanups registered while a lease is held; they run, in order, before the slot is given back. */
export interface LeaseScope {
  readonly lease: LeaseGrant;
  /** Runs `cleanup` before the release, e.g. closing the connection the lease pays for. */
  beforeRelease(cleanup: () => Promise<unknown> | unknown): void;
}

function toError(failure: Failure): LeaseError {
  return new LeaseError(failure.code, failure.message, { retryAfterMs: failure.retryAfterMs });
}

function unavailable(cause: unknown): LeaseError {
  // A call that threw rather than answered: the coordinator restarted, was unreachable or
  // overloaded. Safe to retry: a waiter whose call failed holds no slot it knows of, and a slot it
  // was granted without hearing of it comes back at its TTL.
  return new LeaseError("COORDINATOR_UNAVAILABLE", "The lease coordinator could not be reached", { cause, retryAfterMs: 100 });
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
}

/**
 * Application-facing leases for one pool: `acquire`, `release`, `renew` throw `LeaseError`s with
 * stable codes; `withLease` holds a slot exactly as long as a piece of work.
 *
 * @example
 * const leases = new Leases(env.COORDINATOR_DO.getByName("main"), { holder: requestId });
 * const rows = await leases.withLease(() => sql`select 1`, { waitUntil: ctx.waitUntil.bind(ctx) });
 */
export class Leases implements LeaseClient {
  readonly #coordinator: Coordinator;
  readonly #holder: string;
  #acquires: Coalescer<AcquireOptions, AcquireResult | null> | undefined;
  #releases: Coalescer<LeaseRef, ReleaseResult | null> | undefined;

  constructor(coordinator: Coordinator, options: LeasesOptions = {}) {
    this.#coordinator = coordinator;
    this.#holder = options.holder ?? "";
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
   * One batch call: an answer per item, in order; `null` for an item to send on its own (a request
   * not granted at once, or every item once the coordinator turned out to have no batch methods —
   * an older deployment — after which this client makes single calls only).
   */
  async #batch<I, O>(items: I[], send: () => Promise<Result<{ results: Array<O | null> }>>): Promise<Array<O | Failure | null>> {
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
   * Waits for a slot; throws `QUEUE_FULL`, `ACQUIRE_TIMEOUT` or `COORDINATOR_UNAVAILABLE`.
   *
   * @example
   * const lease = await leases.acquire({ waitMs: 2000 });
   */
  async acquire(options: AcquireOptions = {}): Promise<LeaseGrant> {
    const request: AcquireOptions = {
      holder: options.holder ?? this.#holder,
      waitMs: options.waitMs,
      ttlMs: options.ttlMs,
      priority: options.priority,
      tenant: options.tenant,
    };
    const acquires = this.#acquires;
    // Alone: a single call. In a batch: granted if a slot is free now, else queued by a call of its own.
    const result = (acquires && (await call(() => acquires.call(request)))) ?? (await call(() => this.#coordinator.acquire(request)));
    if (!result.ok) throw toError(result);
    return result.lease;
  }

  /**
   * Gives the slot back; throws `LEASE_EXPIRED`, `LEASE_NOT_FOUND` or `STALE_FENCE` when the
   * coordinator no longer counts this lease (the slot is not freed twice).
   *
   * @example
   * await leases.release(lease);
   */
  async release(lease: LeaseGrant): Promise<void> {
    const ref = { leaseId: lease.id, fence: lease.fence };
    const releases = this.#releases;
    const result = (releases && (await call(() => releases.call(ref)))) ?? (await call(() => this.#coordinator.release(ref)));
    if (!result.ok) throw toError(result);
  }

  /**
   * Extends the lease; returns the renewed lease with its new `expiresAt`.
   *
   * @example
   * lease = await leases.renew(lease, 30_000);
   */
  async renew(lease: LeaseGrant, ttlMs?: number): Promise<LeaseGrant> {
    const result = await call(() => this.#coordinator.renew({ leaseId: lease.id, fence: lease.fence }, ttlMs));
    if (!result.ok) throw toError(result);
    return result.lease;
  }

  /** The pool's live state for operators. */
  async stats(): Promise<PoolStats> {
    return await call(() => this.#coordinator.stats());
  }

  /**
   * Acquires, runs `fn`, and releases in `finally` — also when `fn` throws. With `waitUntil` the
   * cleanups and the release run in the background, so the response does not wait for them.
   *
   * @example
   * const user = await leases.withLease(async ({ beforeRelease }) => {
   *   const sql = connect(); beforeRelease(() => sql.end());
   *   return (await sql`select * from users where id = ${id}`)[0];
   * }, { waitUntil: (p) => ctx.waitUntil(p) });
   */
  async withLease<T>(fn: (scope: LeaseScope) => Promise<T> | T, options: WithLeaseOptions = {}): Promise<T> {
    const lease = await this.acquire(options);
    const cleanups: Array<() => Promise<unknown> | unknown> = [];
    const scope: LeaseScope = { lease, beforeRelease: (cleanup) => void cleanups.push(cleanup) };
    try {
      return await fn(scope);
    } finally {
      const done = this.#finish(lease, cleanups);
      if (options.waitUntil) options.waitUntil(done);
      else await done;
    }
  }

  async #finish(lease: LeaseGrant, cleanups: Array<() => Promise<unknown> | unknown>): Promise<void> {
    for (const cleanup of cleanups) {
      try {
        await cleanup();
      } catch {
        // A failed cleanup must not keep the slot: the connection is gone either way.
      }
    }
    try {
      await this.release(lease);
    } catch {
      // Already expired or reaped: the coordinator has taken the slot back itself.
    }
  }
}
