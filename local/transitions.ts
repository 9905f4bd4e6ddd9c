/**
 * The local adapter's transitions: each is one transaction under the pool's advisory lock — load
 * the pool, run a batch of calls' steps on it, write back the difference and the notices, commit.
 * Calls made while a transition is in flight join the next one (group commit): one lock, one load
 * and one write per batch, so throughput grows with load instead of collapsing under it.
 */
import type { ReservedSql, Sql } from "postgres";
import { type Effects, type Lease, type PoolState, cancel, release, withdraw } from "../src/core/index.ts";
import { terminateLeaseBackends } from "../src/db/enforce.ts";
import { type Committable, type Step, GroupCommit, mergeEffects } from "../src/engine/index.ts";
import { noticesOf } from "./notify.ts";
import { type Loaded, loadPool, writePool } from "./rows.ts";

/** A step run inside a transition, on the state loaded under the pool's lock. */
export type LocalStep<T> = (state: PoolState, now: number, loaded: Loaded) => Step<T>;

/** A call waiting for the next transition. */
interface Call extends Committable {
  step: LocalStep<unknown>;
  resolve: (answer: unknown) => void;
}

/** Calls per transition at most, so one transaction stays short. */
const MAX_BATCH = 256;

/** What the coordinator tells its transitions, and hears from them after each commit. */
export interface TransitionOptions {
  sql: Sql;
  pool: string;
  /** The channel notices go out on (`NOTIFY`, delivered on commit only). */
  channel: string;
  /** `synchronous_commit` stays on: see `PostgresCoordinatorOptions.durableCommits`. */
  durable: boolean;
  /** `LEASE_ENFORCE=terminate`: see `PostgresCoordinatorOptions.enforce`. */
  enforce: boolean;
  /** The pid stamped on waiter rows this process queues (its LISTEN connection's). */
  ownerPid: () => number | null;
  /** After each commit, with the state it left and what it did. */
  committed: (state: PoolState, effects: Effects) => void;
}

/**
 * The transitions of one process for one pool.
 *
 * @example
 * const transitions = new Transitions({ sql, pool, channel, durable: false, ownerPid, committed });
 * const answer = await transitions.run((state, now) => steps.release(ref)(state, now));
 */
export class Transitions {
  readonly #o: TransitionOptions;
  readonly #commits = new GroupCommit<Call>((take) => this.#commit(take), MAX_BATCH);
  #conn: ReservedSql | undefined;

  constructor(options: TransitionOptions) {
    this.#o = options;
  }

  /** Runs `step` in the next transition; answers once it is committed. */
  run<T>(step: LocalStep<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#commits.add({ step, resolve: resolve as (answer: unknown) => void, reject });
    });
  }

  /** Gives back the reserved connection (the caller owns the client and ends it). */
  close(): void {
    this.#conn?.release();
    this.#conn = undefined;
  }

  /**
   * One transition. One reserved connection per process runs them: batches are sequential anyway,
   * and managing BEGIN/COMMIT ourselves lets the writes and the COMMIT share one round trip, so
   * the pool's lock is held for about one round trip per batch.
   */
  async #commit(take: () => Call[]): Promise<void> {
    const o = this.#o;
    if (!this.#conn) {
      const conn = await o.sql.reserve();
      // See `durableCommits`: set once for this connection instead of in every transaction.
      if (!o.durable) await conn`SET synchronous_commit = off`;
      this.#conn = conn;
    }
    const tx = this.#conn;
    let done: { answers: unknown[]; effects: Effects; state: PoolState; batch: Call[] };
    try {
      const loaded = await loadPool(tx, o.pool, true);
      const batch = take();
      const { answers, effects } = runSteps(loaded, batch);
      if (o.enforce && effects.expired.length > 0) await terminateReaped(tx, effects.expired);
      const notices = noticesOf(loaded.state, effects);
      await Promise.all([writePool(tx, o.pool, loaded, o.ownerPid(), { channel: o.channel, notices }), tx`COMMIT`]);
      done = { answers, effects, state: loaded.state, batch };
    } catch (error) {
      await tx`ROLLBACK`.catch(() => {
        // A broken connection: the server rolled back when it dropped; take a fresh one next time.
        tx.release();
        this.#conn = undefined;
      });
      throw error;
    }
    for (const [i, call] of done.batch.entries()) call.resolve(done.answers[i]);
    o.committed(done.state, done.effects);
  }
}

/**
 * The backends of leases this transition reaps are terminated before it commits, under the pool's
 * lock: the grants of their slots are announced (NOTIFY, answers) only after COMMIT, so the next
 * holder logs in after the old backend has exited (a holder frozen past its TTL keeps its socket,
 * and Postgres its backend). In a savepoint: a refusal (this role may not signal the holders'
 * backends) costs the enforcement, never the transition.
 */
async function terminateReaped(tx: ReservedSql, expired: readonly Lease[]): Promise<void> {
  await tx`SAVEPOINT leasegate_enforce`;
  try {
    await terminateLeaseBackends(
      tx,
      expired.map((l) => l.id),
    );
    await tx`RELEASE SAVEPOINT leasegate_enforce`;
  } catch {
    await tx`ROLLBACK TO SAVEPOINT leasegate_enforce`;
  }
}

/**
 * Runs a batch's steps on one loaded state, in call order. A dead process's waiters are withdrawn
 * first, so a freed slot never goes to a caller that no longer exists.
 */
function runSteps(loaded: Loaded, batch: Call[]): { answers: unknown[]; effects: Effects } {
  const { state } = loaded;
  const effects: Effects = { granted: [], timedOut: [], expired: [] };
  if (loaded.dead.length > 0) mergeEffects(effects, withdraw(state, loaded.dead, Date.now()).effects);
  const answers = batch.map((call) => {
    const step = call.step(state, Date.now(), loaded);
    mergeEffects(effects, step.effects);
    return step.answer;
  });
  return { answers, effects };
}

/**
 * Callers of this process that are gone (closed, aborted) leave the queue; one granted just now,
 * before it heard of it, gives its slot straight back.
 *
 * @example
 * await transitions.run((state, now) => ({ answer: null, effects: giveBack(state, ids, now) }));
 */
export function giveBack(state: PoolState, ids: string[], now: number): Effects {
  const effects: Effects = { granted: [], timedOut: [], expired: [] };
  for (const id of ids) {
    const lease = state.leases.get(id);
    mergeEffects(
      effects,
      lease ? release(state, { leaseId: id, fence: lease.fence }, now).effects : cancel(state, id, now).effects,
    );
  }
  return effects;
}
