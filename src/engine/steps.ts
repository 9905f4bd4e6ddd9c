/**
 * The coordinator's operations as steps on a pool's state: what both backends do alike. A step
 * runs the core at `now` and returns its answer (a result object, as crosses RPC) plus the core's
 * effects. The Durable Object runs steps on its in-memory state; the Postgres backend runs them
 * inside a transaction on the state it loaded. Neither builds an answer of its own.
 * Imported as a namespace: `steps.release(ref)(state, now)`.
 */
import {
  type AcquireOptions,
  type AcquireResult,
  type ControlResult,
  type Effects,
  type Failure,
  type Lease,
  type LeaseOutcome,
  type LeaseRef,
  type PoolState,
  type ReleaseResult,
  type RenewResult,
  type RevokeResult,
  type VerifyRef,
  LeaseError,
  expected,
  isLeaseError,
} from "../core/index.ts";
import * as core from "../core/index.ts";
import { failureOf, grantOf, grantResult, loadOf } from "./answers.ts";

/**
 * What one step answers and what the core did besides. `written` names the leases the step
 * itself handed out or extended (a grant, a renewal) and `removed` the ones it freed; effects name
 * the rest. A backend that writes rows writes these; the Durable Object checks `written` against
 * its durable bounds (fences and expiries it may answer without waiting).
 */
export interface Step<T> {
  answer: T;
  effects: Effects;
  written?: Lease[] | undefined;
  removed?: string[] | undefined;
}

/** A step to run on a pool's state at time `now`. */
export type StepFn<T> = (state: PoolState, now: number) => Step<T>;

function leaseFailure(outcome: Exclude<LeaseOutcome, { status: "ok" }>): Failure {
  return { ok: false, code: outcome.code, message: outcome.message };
}

/**
 * An acquire's answer: a result now, a place in the queue until `deadline` (the backend parks the
 * caller), or, with `queue: false`, deferred (nothing recorded; a batch answers `null`).
 */
export type AcquireAnswer =
  | { readonly kind: "result"; readonly result: AcquireResult }
  | { readonly kind: "queued"; readonly deadline: number; readonly position: number }
  | { readonly kind: "deferred" };

/**
 * An acquire under `leaseId` (chosen by the backend), as sent over RPC. The releases it carries
 * (`AcquireOptions.release`) go first, in the same step: the slots they free are there for this
 * acquire's turn, and they stand even when the acquire itself is refused. `verify`: see `release`.
 *
 * @example
 * const { answer, effects } = steps.acquire(crypto.randomUUID(), options, true)(pool, Date.now());
 */
export function acquire(
  leaseId: string,
  options: AcquireOptions,
  queue: boolean,
  verify?: VerifyRef,
): StepFn<AcquireAnswer> {
  return (state, now) => {
    // An array is an object too, and would otherwise be taken as "all defaults".
    if (typeof options !== "object" || options === null || Array.isArray(options)) {
      throw new LeaseError("INVALID_ARGUMENT", expected("options", "an object", options));
    }
    const refs = carried(options);
    if (refs.length === 0) return decide(leaseId, options, queue, state, now);
    const effects: Effects = { granted: [], timedOut: [], expired: [] };
    const removed: string[] = [];
    for (const ref of refs) {
      const done = release(ref, verify)(state, now);
      mergeEffects(effects, done.effects);
      removed.push(...(done.removed ?? []));
    }
    let decided: Step<AcquireAnswer>;
    try {
      decided = decide(leaseId, options, queue, state, now);
    } catch (error) {
      if (!isLeaseError(error)) throw error;
      return { answer: { kind: "result", result: failureOf(error) }, effects, removed };
    }
    mergeEffects(effects, decided.effects);
    return { ...decided, effects, removed };
  };
}

/** The acquire itself, on a pool that has taken back what the call carried. */
function decide(
  leaseId: string,
  options: AcquireOptions,
  queue: boolean,
  state: PoolState,
  now: number,
): Step<AcquireAnswer> {
  // The caller's fields as declared once (`ACQUIRE_REQUEST_KEYS`); only a missing holder
  // defaults, null or another type is refused like any bad field.
  const fields = core.requestFields(options);
  const holder = fields.holder === undefined ? "" : fields.holder;
  const { outcome, effects } = core.acquire(state, { ...fields, leaseId, holder, queue }, now);
  switch (outcome.status) {
    case "granted":
      return {
        answer: { kind: "result", result: grantResult(outcome.lease, loadOf(state), 0) },
        effects,
        written: [outcome.lease],
      };
    case "queued":
      return { answer: { kind: "queued", deadline: outcome.deadline, position: outcome.position }, effects };
    case "deferred":
      return { answer: { kind: "deferred" }, effects };
    default: {
      const { code, message, retryAfterMs } = outcome;
      return {
        answer: { kind: "result", result: { ok: false, code, message, retryAfterMs, load: loadOf(state) } },
        effects,
      };
    }
  }
}

/** The releases an acquire carries, all checked before any is applied: none, or 1 to `MAX_BATCH` well-formed refs. */
function carried(options: AcquireOptions): readonly LeaseRef[] {
  const refs = options.release;
  if (refs === undefined) return [];
  core.checkBatch("release", refs);
  for (const ref of refs) core.checkRef(ref);
  return refs;
}

/**
 * A release: an unknown id or a stale fence fails with its code and frees nothing. `verify`
 * (the Durable Object's token check) lets a recovery window remember a verified earlier lease
 * released before it was recovered; a backend without a window passes none.
 *
 * @example
 * steps.release(leaseRef(lease))(pool, Date.now())
 */
export function release(ref: LeaseRef, verify?: VerifyRef): StepFn<ReleaseResult> {
  return (state, now) => {
    const { outcome, effects } = core.release(state, ref, now, verify);
    if (outcome.status !== "ok") return { answer: leaseFailure(outcome), effects };
    return { answer: { ok: true, released: true }, effects, removed: [outcome.lease.id] };
  };
}

/**
 * A renewal to now + `ttlMs` (default: the pool's TTL); a revoked lease's fails with `LEASE_LOST`.
 * `verify`: the token check a recovery window needs to recover an earlier lease (see `core.renew`).
 *
 * @example
 * steps.renew(leaseRef(lease), 30_000)(pool, Date.now())
 */
export function renew(ref: LeaseRef, ttlMs?: number, verify?: VerifyRef): StepFn<RenewResult> {
  return (state, now) => {
    const { outcome, effects } = core.renew(state, ref, now, ttlMs, verify);
    if (outcome.status !== "ok") return { answer: leaseFailure(outcome), effects };
    return { answer: { ok: true, lease: grantOf(outcome.lease, now) }, effects, written: [outcome.lease] };
  };
}

function controlAnswer(state: PoolState): ControlResult {
  return { ok: true, paused: state.paused, limit: state.config.limit, limitOverride: state.limitOverride };
}

/**
 * Pauses (drain) or resumes granting; answers the pool's settings after it.
 *
 * @example
 * steps.pause(true)(pool, Date.now())
 */
export function pause(paused: boolean): StepFn<ControlResult> {
  return (state, now) => ({ effects: core.setPaused(state, paused, now), answer: controlAnswer(state) });
}

/**
 * An operator's limit (`null`: back to `configured`, the limit from env or options).
 *
 * @example
 * steps.setLimit(20, 10)(pool, Date.now())
 */
export function setLimit(limit: number | null, configured: number): StepFn<ControlResult> {
  return (state, now) => ({ effects: core.setLimit(state, limit, configured, now), answer: controlAnswer(state) });
}

/**
 * Revokes a lease by its id or an unambiguous prefix of at least 8 characters. Its slot is not
 * granted again while its statement may still run: the lease stays held until its holder releases
 * it (the holder's next renewal fails with `LEASE_LOST`: stop, then release) or it expires.
 *
 * @example
 * steps.revoke("3f2a9c1b")(pool, Date.now())
 */
export function revoke(idOrPrefix: string): StepFn<RevokeResult> {
  return (state, now) => {
    const { lease, effects } = core.revoke(state, idOrPrefix, now);
    const answer = {
      ok: true,
      revoked: true,
      idPrefix: lease.id.slice(0, 8),
      holder: lease.holder,
      expiresInMs: Math.max(0, lease.expiresAt - now),
    } as const;
    // The lease changed in place (or was reaped, in `effects`, if it had expired): nothing handed out.
    return { answer, effects };
  };
}

/**
 * Runs `step` and turns a `LeaseError` it throws into its failure (the core validates before it
 * mutates, so a refused call changed nothing).
 *
 * @example
 * const { answer } = guarded(releaseStep(ref))(pool, now);
 */
export function guarded<T>(step: StepFn<T>): StepFn<T | Failure> {
  return (state, now) => {
    try {
      return step(state, now);
    } catch (error) {
      if (!isLeaseError(error)) throw error;
      return { answer: failureOf(error), effects: { granted: [], timedOut: [], expired: [] } };
    }
  };
}

/** Appends `more` to `into` (effects of several steps in one transition). */
export function mergeEffects(into: Effects, more: Effects): void {
  into.granted.push(...more.granted);
  into.timedOut.push(...more.timedOut);
  into.expired.push(...more.expired);
}
