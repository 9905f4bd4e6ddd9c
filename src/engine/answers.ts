/**
 * Answers as they cross RPC or a process boundary, built alike by both backends: grants, failures,
 * timeouts, and the load a sharded client reads.
 */
import {
  type AcquireResult,
  type Failure,
  type Lease,
  type LeaseGrant,
  type PoolState,
  type ShardLoad,
  type TimeoutFacts,
  capacity,
  formatTimeout,
  isLeaseError,
} from "../core/index.ts";

/**
 * A lease as it crosses RPC: the core's lease without its scheduling fields (a shell that signs
 * adds `token`), valid for what is left of it from `takenUpAt` (when the call it answers arrived;
 * default: the grant).
 */
export function grantOf(lease: Lease, takenUpAt: number = lease.grantedAt): LeaseGrant {
  return {
    id: lease.id,
    fence: lease.fence,
    holder: lease.holder,
    grantedAt: lease.grantedAt,
    expiresAt: lease.expiresAt,
    validForMs: lease.expiresAt - takenUpAt,
  };
}

/** A thrown error as a result object: a `LeaseError` keeps its code; anything else is `INTERNAL`. */
export function failureOf(error: unknown): Failure {
  if (isLeaseError(error)) return { ok: false, code: error.code, message: error.message };
  return { ok: false, code: "INTERNAL", message: "The coordinator failed to handle the call" };
}

/** What a sharded client picks shards by: held, waiting, and the slots grantable now (0 while paused or recovering). */
export function loadOf(state: PoolState): ShardLoad {
  return {
    held: state.leases.size,
    waiting: state.queue.length,
    limit: state.paused || state.recovery ? 0 : capacity(state),
  };
}

/** The answer of a waiter whose deadline passed (built where it waited, from the facts sent to it). */
export function timeoutResult(facts: TimeoutFacts, load?: ShardLoad): AcquireResult {
  const result = {
    ok: false,
    code: "ACQUIRE_TIMEOUT",
    message: formatTimeout(facts),
    retryAfterMs: facts.retryAfterMs,
  } as const;
  return load === undefined ? result : { ...result, load };
}

/** The answer of a waiter (or caller) granted `lease`; `queuePosition`: see `LeaseGrant.queuePosition`. */
export function grantResult(lease: Lease | LeaseGrant, load?: ShardLoad, queuePosition?: number): AcquireResult {
  const grant = grantOf(lease as Lease);
  const granted = { ok: true, lease: queuePosition === undefined ? grant : { ...grant, queuePosition } } as const;
  return load === undefined ? granted : { ...granted, load };
}
