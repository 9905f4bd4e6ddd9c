import { DEFAULT_CARRY_MS, type LeaseRef, MAX_BATCH, checkInt } from "../core/index.ts";

/**
 * Releases waiting for a ride: the leases an isolate's finished work gave back, sent to the
 * coordinator by the isolate's next acquire (`AcquireOptions.release`) instead of one call each.
 * A release nothing carried within `carryMs` goes out on its own (with any others waiting), so a
 * quiet isolate holds a finished slot at most that much longer. Plain data, no I/O objects: one
 * outbox serves every request of an isolate, each sending on its own stub.
 *
 * @example
 * const outbox = new ReleaseOutbox(5); // module scope: one per pool and isolate
 * const leases = new Leases(stub, { outbox, waitUntil: (p) => ctx.waitUntil(p) });
 */
export class ReleaseOutbox {
  readonly carryMs: number;
  #refs: LeaseRef[] = [];

  constructor(carryMs: number = DEFAULT_CARRY_MS) {
    this.carryMs = checkInt("carryMs", carryMs, 1, 1000);
  }

  /** Leaves a finished lease's release for the next acquire (or its own send, after `carryMs`). */
  add(ref: LeaseRef): void {
    this.#refs.push(ref);
  }

  /** Whether `ref` still waits (no acquire has taken it yet). */
  has(ref: LeaseRef): boolean {
    return this.#refs.includes(ref);
  }

  /** Takes the waiting releases, oldest first, at most a batch. */
  take(): LeaseRef[] {
    return this.#refs.splice(0, MAX_BATCH);
  }
}
