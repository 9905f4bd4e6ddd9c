import { type ErrorCode, LeaseError, expected } from "./errors.ts";
import type { AcquireRequest, LeaseRef, Priority } from "./types.ts";
import type { Reconciliation } from "./reconcile.ts";
import type { ShardLoad } from "./shard.ts";

/**
 * What crosses a process or RPC boundary. Errors lose their class and fields over Durable Object
 * RPC, so coordinators answer with result objects and clients turn failures into `LeaseError`s.
 */
export interface LeaseGrant {
  readonly id: string;
  readonly fence: number;
  readonly holder: string;
  readonly grantedAt: number;
  readonly expiresAt: number;
  /**
   * How long the lease is valid counted from the moment the coordinator took up the call this
   * answers (the acquire's arrival, including its time in the queue; the renewal's arrival), ms on
   * the coordinator's clock. A holder adds it to the time it *sent* the call, on its own clock, to
   * know when the lease ends without comparing clocks. Absent from older coordinators.
   */
  readonly validForMs?: number | undefined;
  /**
   * Proof that this id, fence and expiry came from the coordinator (the Durable Object's; the
   * Postgres backend keeps its leases in tables and sets none). Send it back with `expiresAt` on
   * renewal and release (`leaseRef`): after a restart only a lease with a token is recovered.
   */
  readonly token?: string | undefined;
  /**
   * The caller's place in the queue when it was queued (1: next in line), or 0 when the slot was
   * granted at once: for traces (`leasegate.queue_position`). Absent from older coordinators.
   */
  readonly queuePosition?: number | undefined;
}

export interface Failure {
  readonly ok: false;
  readonly code: ErrorCode;
  readonly message: string;
  readonly retryAfterMs?: number | undefined;
}

export type Result<T> = ({ readonly ok: true } & T) | Failure;

/** The keys of `T` a list leaves out: `never` when the list names every one. */
type Unlisted<T, K extends readonly PropertyKey[]> = Exclude<keyof T, K[number]>;

/**
 * What a lease reference carries, declared once: every path that turns a lease into a reference
 * (renewal, release, the outbox, batches) builds it with `leaseRef`, so a new field of `LeaseRef`
 * is one edit here — the check below stops the build while a field of `LeaseRef` is missing.
 *
 * @example
 * LEASE_REF_KEYS // ["leaseId", "fence", "expiresAt", "token"]
 */
export const LEASE_REF_KEYS = ["leaseId", "fence", "expiresAt", "token"] as const satisfies readonly (keyof LeaseRef)[];
const everyRefKey: [Unlisted<LeaseRef, typeof LEASE_REF_KEYS>] extends [never]
  ? true
  : Unlisted<LeaseRef, typeof LEASE_REF_KEYS> = true;
void everyRefKey;

/**
 * The reference a holder sends to renew or release `lease`: its id, fence, the expiry it was last
 * told and the token that came with it.
 *
 * @example
 * await coordinator.renew(leaseRef(lease));
 */
export function leaseRef(lease: LeaseGrant): LeaseRef {
  const ref: { -readonly [K in keyof LeaseRef]: LeaseRef[K] } = { leaseId: lease.id, fence: lease.fence };
  for (const key of LEASE_REF_KEYS) {
    if (key === "leaseId" || key === "fence") continue;
    const value = lease[key];
    if (value !== undefined) ref[key] = value as never;
  }
  return ref;
}

/**
 * `load`: the answering coordinator's held, waiting and limit right after the call (a sharded
 * client picks shards by it). Absent from older coordinators and from failures to handle the call.
 */
export type AcquireResult = Result<{ lease: LeaseGrant }> & { readonly load?: ShardLoad | undefined };
export type ReleaseResult = Result<{ released: true }>;
export type RenewResult = Result<{ lease: LeaseGrant }>;

/**
 * The answer to `acquireMany`: one entry per request, in order. `null`: no slot could be granted
 * at once; that request was not queued, and the client sends it on its own (so it waits, times out
 * and is counted like any single call). A malformed batch fails as a whole.
 */
export type AcquireManyResult = Result<{ results: Array<AcquireResult | null> }>;

/** The answer to `releaseMany`: one result per lease, in order; a malformed batch fails as a whole. */
export type ReleaseManyResult = Result<{ results: ReleaseResult[] }>;

/** Most requests one batch call carries; a client splits larger sets. */
export const MAX_BATCH = 128;

/**
 * A batch as received over RPC: an array of 1 to `MAX_BATCH` items, or `INVALID_ARGUMENT`.
 *
 * @example
 * const refs = checkBatch("refs", input);
 */
export function checkBatch<T>(name: string, items: readonly T[]): readonly T[] {
  if (!Array.isArray(items) || items.length === 0 || items.length > MAX_BATCH) {
    throw new LeaseError("INVALID_ARGUMENT", expected(name, `an array of 1 to ${MAX_BATCH} items`, items));
  }
  return items;
}

/**
 * The fields of an acquire that travel from a caller to the core unchanged, declared once: the
 * client forwards them (`coordinatorRequest`), the engine hands them to the core (`steps.acquire`).
 * The check below stops the build while a field of `AcquireOptions` is neither listed nor one the
 * coordinator handles itself (`release`, `object`).
 *
 * @example
 * const fields = requestFields(options); // only the keys in ACQUIRE_REQUEST_KEYS
 */
export const ACQUIRE_REQUEST_KEYS = [
  "holder",
  "waitMs",
  "ttlMs",
  "claimMs",
  "priority",
  "tenant",
] as const satisfies readonly (keyof AcquireOptions & keyof AcquireRequest)[];
const everyRequestKey: [Exclude<Unlisted<AcquireOptions, typeof ACQUIRE_REQUEST_KEYS>, "release" | "object">] extends [
  never,
]
  ? true
  : Unlisted<AcquireOptions, typeof ACQUIRE_REQUEST_KEYS> = true;
void everyRequestKey;

/**
 * The listed fields of an acquire's options (absent ones left out).
 *
 * @example
 * requestFields({ holder: "a", waitMs: 0, release: [] }) // { holder: "a", waitMs: 0 }
 */
export function requestFields(options: AcquireOptions): Pick<AcquireOptions, (typeof ACQUIRE_REQUEST_KEYS)[number]> {
  const out: Record<string, unknown> = {};
  for (const key of ACQUIRE_REQUEST_KEYS) if (options[key] !== undefined) out[key] = options[key];
  return out as Pick<AcquireOptions, (typeof ACQUIRE_REQUEST_KEYS)[number]>;
}

/** Options of one acquire, as sent to a coordinator. */
export interface AcquireOptions {
  /** Who holds the lease, shown to operators (request id, process id). */
  holder?: string | undefined;
  /** How long to wait in the queue, ms; 0 = only if a slot is free now. Default: the pool's `waitMs`. */
  waitMs?: number | undefined;
  /** Lease lifetime without renewal, ms. Default: the pool's `leaseTtlMs`. */
  ttlMs?: number | undefined;
  /**
   * Lifetime of a lease granted after a wait until the caller claims it by renewing, ms (at most
   * `ttlMs`). Sent by `Leases` (its `claimMs`), which claims at once; without it a grant from the
   * queue lives `ttlMs`, as for older clients.
   */
  claimMs?: number | undefined;
  /** `critical` may use reserved slots and goes first; `batch` is capped. Default `normal`. */
  priority?: Priority | undefined;
  /** Fairness key (customer, API key): tenants take turns for slots within a class. */
  tenant?: string | undefined;
  /**
   * The name the caller reached the object by (`idFromName`), sent by a sharded client: an object
   * the runtime does not tell its own name checks it against its id and keeps it, so it knows
   * whether it is a pool's root or shard `i` (`${pool}#${i}`). A name that does not derive the
   * object's id is ignored.
   */
  object?: string | undefined;
  /**
   * Leases this call gives back before it asks (1 to `MAX_BATCH`): their holders finished, and a
   * client sends their releases with its next acquire instead of one call each (`Leases`'s
   * `outbox`). Applied first, in order; one already released or reaped changes nothing; a
   * malformed one fails the acquire with `INVALID_ARGUMENT` before anything is applied.
   */
  release?: LeaseRef[] | undefined;
}

/** The answer to an operator control (pause, resume, limit change): the pool's settings after it. */
export type ControlResult = Result<{ paused: boolean; limit: number; limitOverride: number | null }>;

/**
 * The answer to an operator's revoke: who holds the lease, and how long its slot may stay taken
 * (the lease counts as held until its holder releases it or it expires, whichever is first).
 */
export type RevokeResult = Result<{ revoked: true; idPrefix: string; holder: string; expiresInMs: number }>;

/** The answer to a reconciliation: the comparison, as kept for `operatorStats()`. */
export type ReconcileResult = Result<Reconciliation>;
