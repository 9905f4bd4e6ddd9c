/**
 * A connection held under one lease until its holder gives it back: what an ORM's
 * acquire/release (Kysely's `acquireConnection`/`releaseConnection`, a pg pool's
 * `connect`/`release` under Prisma's transactions) needs of a leased pool, whose own `sql(fn)`
 * holds the lease only while `fn` runs.
 */
import type { CallOptions } from "../db/database.ts";
import type { LeasedPool } from "../db/pool.ts";

/** What a hold needs of a pool (`workerPool`, `localPool`): its `sql`, one fresh connection under one lease. */
export type SqlPool<Client> = Pick<LeasedPool<Client>, "sql">;

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
   * Gives the connection back: it is closed, then the slot released — awaited where the pool has
   * no `waitUntil` (Node, Deno), in `ctx.waitUntil` on Workers. Never throws; idempotent.
   */
  release(): Promise<void>;
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
      held = { client, stopped: () => stop, release };
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
