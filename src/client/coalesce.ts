import { MAX_BATCH } from "../core/index.ts";

interface Entry<I, O> {
  readonly item: I;
  resolve(value: O): void;
  reject(error: unknown): void;
}

/**
 * Client-side group commit. Calls made in the same turn, or while a batch is in flight, go out
 * together as one batch (at most `MAX_BATCH`); a call with no company goes out as a single call, as
 * it would without coalescing, and holds nothing up. So a lone caller pays nothing extra (not even
 * under a full pool, where a single acquire queues in one call), and N concurrent callers pay a few
 * round trips instead of N.
 *
 * @example
 * const releases = new Coalescer((ref) => stub.release(ref), (refs) => releaseAll(refs));
 * await Promise.all(leases.map((l) => releases.call(leaseRef(l))));
 */
export class Coalescer<I, O> {
  readonly #one: (item: I) => Promise<O>;
  readonly #many: (items: I[]) => Promise<O[]>;
  #pending: Array<Entry<I, O>> = [];
  #scheduled = false;
  #inFlight = false;

  /** `many` answers one output per item, in order; if it throws, every caller of that batch gets the error. */
  constructor(one: (item: I) => Promise<O>, many: (items: I[]) => Promise<O[]>) {
    this.#one = one;
    this.#many = many;
  }

  call(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.#pending.push({ item, resolve, reject });
      if (this.#scheduled) return;
      // The rest of this turn may add company (callers resumed by the same answer, say).
      this.#scheduled = true;
      queueMicrotask(() => {
        this.#scheduled = false;
        this.#pump();
      });
    });
  }

  #pump(): void {
    if (this.#inFlight || this.#pending.length === 0) return;
    const batch = this.#pending.splice(0, MAX_BATCH);
    if (batch.length === 1) {
      const [entry] = batch;
      attempt(() => this.#one(entry!.item)).then(entry!.resolve, entry!.reject);
      return;
    }
    this.#inFlight = true;
    attempt(() => this.#many(batch.map((entry) => entry.item))).then(
      (outputs) => this.#settle(batch, (entry, i) => entry.resolve(outputs[i]!)),
      (error) => this.#settle(batch, (entry) => entry.reject(error)),
    );
  }

  #settle(batch: Array<Entry<I, O>>, each: (entry: Entry<I, O>, i: number) => void): void {
    // The next batch goes out first: those who waited behind this one are sent without delay.
    this.#inFlight = false;
    this.#pump();
    batch.forEach(each);
  }
}

/** `fn()`, with a synchronous throw turned into a rejection. */
function attempt<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return fn();
  } catch (error) {
    return Promise.reject(error);
  }
}
