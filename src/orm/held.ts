/**
 * A connection held under one lease until its holder gives it back: what an ORM's
 * acquire/release (Kysely's `acquireConnection`/`releaseConnection`, a pg pool's
 * `connect`/`release` under Prisma's transactions) needs of a leased pool, whose own `sql(fn)`
 * holds the lease only while `fn` runs.
 */
import { BOUNDS, LeaseError, checkInt, expected } from "../core/index.ts";
import type { CallOptions } from "../db/database.ts";
import { sqlState } from "../db/errors.ts";
import type { LeasedPool } from "../db/pool.ts";

/** What a hold needs of a pool (`workerPool`, `localPool`): its `sql`, one fresh connection under one lease. */
export type SqlPool<Client> = Pick<LeasedPool<Client>, "sql">;

/** How an ORM front door asks for its leases: who holds them, the queue's deadline, each connection's budget. */
export interface LeaseOptions {
  /** Who holds the leases, shown to operators (a request id, `GET /notes`). Default `sql`. */
  holder?: string | undefined;
  /** Queue deadline for each lease, ms. Default: the pool's (`LEASE_WAIT_MS`). */
  waitMs?: number | undefined;
  /**
   * Budget of each connection, ms, from the acquire to the release: past it the running statement
   * is cancelled, the connection closed and the slot given back. Default: the pool's (`DB_DEADLINE_MS`).
   */
  deadlineMs?: number | undefined;
}

/**
 * The pool's call options of `options`, checked: a bad value throws `INVALID_ARGUMENT` naming it.
 *
 * @example
 * const calls = callOptionsOf({ holder: "GET /notes", waitMs: 2000 });
 */
export function callOptionsOf(options: LeaseOptions): CallOptions {
  const { holder, waitMs, deadlineMs } = options;
  if (holder !== undefined && typeof holder !== "string")
    throw new LeaseError("INVALID_ARGUMENT", expected("holder", "a string", holder));
  if (waitMs !== undefined) checkInt("waitMs", waitMs, 0, BOUNDS.waitMs);
  if (deadlineMs !== undefined) checkInt("deadlineMs", deadlineMs, 1, BOUNDS.waitMs);
  return { holder, waitMs, deadlineMs };
}

/** A connection under a lease, held until {@link HeldConnection.release}. */
export interface HeldConnection<Client> {
  /** The driver's own client (postgres.js `Sql`, `pg.Client`, Neon `PoolClient`), connected. */
  readonly client: Client;
  /**
   * The error that ended the hold before its release, if one did: the request's deadline passed
   * (`DEADLINE_EXCEEDED`) or the lease was lost (`LEASE_LOST`). The statement running then was
   * cancelled and the connection closed; use this error for anything asked of it after.
   */
  stopped(): unknown;
  /**
   * What to report for a statement that failed with `error`: the hold's own error when it was
   * stopped — also when the server's `statement_timeout`, set from the same deadline, cancelled the
   * statement (57014) a moment before the deadline's timer ran here — else `error` itself.
   */
  failure(error: unknown): Promise<unknown>;
  /**
   * Gives the connection back: it is closed, then the slot released — awaited where the pool has
   * no `waitUntil` (Node, Deno), in `ctx.waitUntil` on Workers. Never throws; idempotent.
   */
  release(): Promise<void>;
}

// How long a statement cancelled by the server (57014) waits for the deadline's timer here before
// it is reported as the driver's error: the server's timer and ours end at about the same moment.
const TIMEOUT_SLACK_MS = 100;

async function settledWithin(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([promise, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/**
 * Takes a lease and one fresh connection of `pool`, with the pool's policies (queue deadline, the
 * request's deadline as `statement_timeout`, the statement cancelled and the connection closed
 * when the lease is lost, connect failures retried), and holds both until `release()`. Rejects
 * with the pool's `LeaseError` when no slot or no connection was had (`QUEUE_FULL`,
 * `ACQUIRE_TIMEOUT`, `DATABASE_UNAVAILABLE`, …).
 *
 * @example
 * const held = await holdConnection(pool, { holder: "GET /notes" });
 * try { await held.client.query("SELECT 1") } finally { await held.release() }
 */
export function holdConnection<Client>(
  pool: SqlPool<Client>,
  options: CallOptions = {},
): Promise<HeldConnection<Client>> {
  return new Promise((resolve, reject) => {
    let end: () => void = () => {};
    const released = new Promise<void>((done) => (end = done));
    let held: HeldConnection<Client> | undefined;
    let stop: unknown;
    const work = pool.sql(async (client) => {
      // `sql` runs this once per attempt, and only once connected: a connect failure is retried
      // before it. Once the connection is handed out nothing is run again (a passed deadline and a
      // lost lease are final), so a second call has nobody to hand its connection to.
      if (held) return;
      const release = () => {
        end();
        return finished;
      };
      const failure = async (error: unknown) => {
        if (stop === undefined && sqlState(error) === "57014") await settledWithin(finished, TIMEOUT_SLACK_MS);
        return stop ?? error;
      };
      held = { client, stopped: () => stop, failure, release };
      resolve(held);
      await released;
    }, options);
    // `sql` answers a passed deadline or a lost lease at once, having cancelled the statement and
    // closed the connection; the hold then ends too, so the slot is given back without waiting for
    // the holder's release.
    const finished = work.then(
      () => {},
      (error: unknown) => {
        if (held) stop = error;
        else reject(error);
        end();
      },
    );
  });
}
