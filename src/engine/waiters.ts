/**
 * Callers parked in this process until the pool settles their wait: the Durable Object's pending
 * RPC calls, a Node or Deno process's pending `acquire`s. Settled once, by whichever comes first:
 * the transition that granted or timed them out, a notice from another process, or a close.
 */
import { type AcquireResult, type Effects, type PoolState, nextExpiryAt, timeoutFacts } from "../core/index.ts";
import { grantResult, loadOf, timeoutResult } from "./answers.ts";

interface Parked {
  readonly holder: string;
  readonly enqueuedAt: number;
  /** Infinity until the pool queued it (a caller is parked before its transition runs). */
  deadline: number;
  /** Its place in the queue when queued (`LeaseGrant.queuePosition`). */
  position?: number | undefined;
  readonly resolve: (result: AcquireResult) => void;
}

/** The answers a transition owes the waiters it settled, built from the state right after it. */
export type Settlements = ReadonlyArray<readonly [leaseId: string, result: AcquireResult]>;

/**
 * What `effects` settled: grants and timeouts with their answers. Built at transition time (the
 * timeout message names held and waiting at that moment), delivered after the commit.
 *
 * @example
 * waiters.settleAll(settlementsOf(pool, effects));
 */
export function settlementsOf(state: PoolState, effects: Effects): Settlements {
  if (effects.granted.length === 0 && effects.timedOut.length === 0) return [];
  const load = loadOf(state);
  return [
    ...effects.granted.map((l) => [l.id, grantResult(l, load)] as const),
    ...effects.timedOut.map((w) => [w.leaseId, timeoutResult(timeoutFacts(state, w), load)] as const),
  ];
}

/**
 * The parked callers of one coordinator instance, by the lease id they will be granted under.
 *
 * @example
 * const answer = waiters.park(leaseId, "req-1", Date.now());
 * waiters.settle(leaseId, { ok: true, lease });
 */
export class Waiters {
  readonly #parked = new Map<string, Parked>();

  /** Parks a caller; its promise resolves when it is settled. */
  park(leaseId: string, holder: string, enqueuedAt: number): Promise<AcquireResult> {
    return new Promise((resolve) => this.#parked.set(leaseId, { holder, enqueuedAt, deadline: Infinity, resolve }));
  }

  /** Records the deadline the pool queued the caller with (its wake-up time if nothing frees), and its place. */
  queued(leaseId: string, deadline: number, position?: number): void {
    const p = this.#parked.get(leaseId);
    if (p) {
      p.deadline = deadline;
      p.position = position;
    }
  }

  /**
   * Answers a parked caller once; later settlements of the same id do nothing. A grant is valid
   * for what is left of it from the moment the caller was parked: its wait counts, so the holder,
   * who measures from when it sent the call, never believes the lease lasts longer than it does.
   */
  settle(leaseId: string, result: AcquireResult): void {
    const p = this.#parked.get(leaseId);
    if (!p) return;
    this.#parked.delete(leaseId);
    const validForMs = result.ok ? result.lease.expiresAt - p.enqueuedAt : 0;
    const position = p.position === undefined ? {} : { queuePosition: p.position };
    p.resolve(result.ok ? { ...result, lease: { ...result.lease, validForMs, ...position } } : result);
  }

  /** Answers every settlement that names a caller parked here (others belong to other processes). */
  settleAll(settlements: Settlements): void {
    for (const [id, result] of settlements) this.settle(id, result);
  }

  /** Forgets a caller without answering it (its call failed before it was queued). */
  drop(leaseId: string): void {
    this.#parked.delete(leaseId);
  }

  /** The holder a parked caller named (a notice from another process carries only the lease). */
  holderOf(leaseId: string): string | undefined {
    return this.#parked.get(leaseId)?.holder;
  }

  get size(): number {
    return this.#parked.size;
  }

  ids(): string[] {
    return [...this.#parked.keys()];
  }

  /**
   * When this instance must next look at the pool: the earliest deadline of its parked callers,
   * the pool's next lease expiry (a dead holder's slot frees only by time) or the end of its
   * recovery window (queued callers are granted then), or null.
   */
  wakeAt(state: PoolState): number | null {
    let at = Math.min(nextExpiryAt(state) ?? Infinity, state.recovery?.until ?? Infinity);
    for (const p of this.#parked.values()) if (p.deadline < at) at = p.deadline;
    return at === Infinity ? null : at;
  }

  /**
   * Settles, from a state read after another instance's transition, every queued caller whose wait
   * that state shows ended (a lease under its id, or gone: timed out) — for notices that were lost.
   */
  settleFrom(state: PoolState): void {
    if (this.#parked.size === 0) return;
    const queued = new Set(state.queue.map((w) => w.leaseId));
    const load = loadOf(state);
    for (const [id, p] of this.#parked) {
      if (p.deadline === Infinity || queued.has(id)) continue;
      const lease = state.leases.get(id);
      if (lease) this.settle(id, grantResult(lease, load));
      else {
        const waiter = { leaseId: id, holder: p.holder, enqueuedAt: p.enqueuedAt, deadline: p.deadline, ttlMs: 0 };
        this.settle(id, timeoutResult(timeoutFacts(state, waiter), load));
      }
    }
  }
}
