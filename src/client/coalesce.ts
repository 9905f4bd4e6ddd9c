import { MAX_BATCH } from "../core/index.ts";

interface Entry<I, O> {
  readonly item: I;
  resolve(value: O): void;
  reject(error: unknown): void;
}

/**
 * Client-side group commit. A call made while no batch is in flight goes out at once, alone; calls
 * made while one is in flight wait for it and go out together in the next (at most `MAX_BATCH` per
 * batch). So a lone caller pays nothing, and N concurrent callers pay a few round trips, not N.
 *
 * @example
 * const releases = new Coalescer((refs: LeaseRef[]) => releaseAll(refs));
 * await Promise.all(leases.map((l) => releases.call({ leaseId: l.id, fence: l.fence })));
 */
export class Coalescer<I, O> {
  readonly #send: (items: I[]) => Promise<O[]>;
  #pending: Array<Entry<I, O>> = [];
  #inFlight = false;

  /** `send` answers one output per item, in order; if it throws, every caller of that batch gets the error. */
  constructor(send: (items: I[]) => Promise<O[]>) {
    this.#send = send;
  }

  call(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.#pending.push({ item, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#inFlight || this.#pending.length === 0) return;
    const batch = this.#pending.splice(0, MAX_BATCH);
    this.#inFlight = true;
    const settle = (outputs: O[] | undefined, error?: unknown) => {
      this.#inFlight = false;
      this.#pump();
      batch.forEach((entry, i) => (outputs ? entry.resolve(outputs[i]!) : entry.reject(error)));
    };
    // `send` is called synchronously, so a batch goes out in the caller's turn (and request context).
    let sent: Promise<O[]>;
    try {
      sent = this.#send(batch.map((entry) => entry.item));
    } catch (error) {
      sent = Promise.reject(error);
    }
    sent.then(
      (outputs) => settle(outputs),
      (error) => settle(undefined, error),
    );
  }
}
