/** Work that joins a commit; failed with the commit's error if the commit fails. */
export interface Committable {
  reject(error: unknown): void;
}

/**
 * Group commit. Work added while a commit is in flight joins the next one, so N calls arriving
 * during one commit cost one more commit instead of N, and throughput grows with load instead of
 * collapsing under it. `commit(take)` runs one batch: it calls `take()` when it is ready to decide
 * (e.g. once it holds the pool's lock), so everything added until then joins; it answers the items
 * itself. A commit that throws fails the items it took (or would have taken).
 *
 * @example
 * const commits = new GroupCommit<Call>(async (take) => { const batch = take(); …; }, 256);
 * commits.add(call);
 */
export class GroupCommit<T extends Committable> {
  #queue: T[] = [];
  #running = false;
  readonly #commit: (take: () => T[]) => Promise<void>;
  readonly #maxBatch: number;

  constructor(commit: (take: () => T[]) => Promise<void>, maxBatch = Number.POSITIVE_INFINITY) {
    this.#commit = commit;
    this.#maxBatch = maxBatch;
  }

  /** Adds `item` to the next commit; starts one at once when none is running. */
  add(item: T): void {
    this.#queue.push(item);
    if (!this.#running) void this.#drain();
  }

  async #drain(): Promise<void> {
    this.#running = true;
    while (this.#queue.length > 0) {
      let batch: T[] | undefined;
      const take = () => (batch = this.#queue.splice(0, this.#maxBatch));
      try {
        await this.#commit(take);
      } catch (error) {
        for (const item of batch ?? take()) item.reject(error);
      }
    }
    this.#running = false;
  }
}
