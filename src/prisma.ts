/**
 * leasegate for Prisma 7 (`npm install @prisma/client @prisma/adapter-pg`): a driver adapter under
 * which every query and every interactive transaction holds one lease of a leased pool
 * (`workerPool`, `localPool`) on the node-postgres driver (`leasegate/pg`). This entry imports
 * `@prisma/adapter-pg` and `pg`, which that adapter runs on, and nothing of the other drivers.
 *
 * @example
 * import { leasedAdapter } from "leasegate/prisma";
 */
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { LeaseError, expected, isLeaseError } from "./core/index.ts";
import type { CallOptions } from "./db/database.ts";
import { sqlState } from "./db/errors.ts";
import { type LeaseOptions, type SqlPool, callOptionsOf, holdConnection } from "./orm/held.ts";

/** What the adapter needs of the pool's driver client: node-postgres's `pg.Client` (`leasegate/pg`). */
export interface PgQueryClient {
  query(config: unknown, values?: unknown): Promise<unknown>;
  on(event: "error", listener: (error: Error) => void): unknown;
  removeListener(event: "error", listener: (error: Error) => void): unknown;
}

/** A Prisma driver adapter factory, as `new PrismaClient({ adapter })` takes it. */
export type LeasedAdapter = Pick<PrismaPg, "provider" | "adapterName" | "connect">;

/**
 * How the adapter's leases are asked for (`deadlineMs`: the budget of each query or interactive
 * transaction), and what it passes to `PrismaPg`.
 */
export interface LeasedAdapterOptions extends LeaseOptions {
  /** The Postgres schema of the models (`PrismaPg`'s `schema`). Default: the connection's search path. */
  schema?: string | undefined;
}

/**
 * A Prisma driver adapter (`@prisma/adapter-pg`'s `PrismaPg`) whose pool is a leased pool: each
 * query takes one lease and one fresh connection, closed before the slot is given back; an
 * interactive transaction (`$transaction(async (tx) => …)`, and a batch `$transaction([…])`)
 * holds one lease and one connection from BEGIN to COMMIT or ROLLBACK. Overload reaches the caller
 * as a Prisma error whose `code` is leasegate's (`QUEUE_FULL`, `ACQUIRE_TIMEOUT`, …), answered 503
 * with `Retry-After` by `errorResponse(leaseErrorOf(error) ?? error)`; a statement the database
 * refused reaches Prisma as the driver's error, so Prisma's own codes (`P2002`, …) stand. Bad
 * options throw `INVALID_ARGUMENT`. Build the client per request on Workers (the pool is per
 * request), once per process on Node.
 *
 * @example
 * const prisma = new PrismaClient({ adapter: leasedAdapter(workerPool(env, ctx, { driver })) });
 * const notes = await prisma.note.findMany({ take: 50 });
 */
export function leasedAdapter(pool: SqlPool<PgQueryClient>, options: LeasedAdapterOptions = {}): LeasedAdapter {
  if (typeof pool?.sql !== "function")
    throw new LeaseError(
      "INVALID_ARGUMENT",
      'leasedAdapter needs a leased pool on the node-postgres driver: `workerPool(env, ctx, { driver })` with `driver` from "leasegate/pg"',
    );
  const calls = callOptionsOf(options);
  if (options.schema !== undefined && typeof options.schema !== "string")
    throw new LeaseError("INVALID_ARGUMENT", expected("schema", "a string", options.schema));
  const leased = leasedPgPool(pool, calls);
  const factory = new PrismaPg(leased, options.schema === undefined ? undefined : { schema: options.schema });
  return {
    provider: factory.provider,
    adapterName: factory.adapterName,
    async connect() {
      const adapter = await factory.connect();
      // `PrismaPg` takes a pool as its own only when it is a `pg.Pool` of the `pg` it imports; with
      // two copies installed it would open a pool of its own, and queries would bypass the leases.
      if (adapter.underlyingDriver() !== leased) {
        await adapter.dispose();
        throw new LeaseError(
          "INVALID_CONFIG",
          "@prisma/adapter-pg loads another copy of `pg` than leasegate/prisma: install one `pg` (`npm dedupe`, or a `pg` version both accept)",
        );
      }
      return adapter;
    },
  };
}

/**
 * A `pg.Pool` as `PrismaPg` uses one, whose connections are leased: `query` runs one statement on
 * one lease and one fresh connection; `connect` holds a lease and a connection until the client's
 * `release()` (an interactive transaction). It never opens a connection of its own.
 */
function leasedPgPool(pool: SqlPool<PgQueryClient>, calls: CallOptions): pg.Pool {
  const leased = new pg.Pool({ max: 1 });
  return Object.assign(leased, {
    query: (config: unknown, values?: unknown) =>
      pool
        .sql((client) => pgClient(client).query(config, values), calls)
        .catch((error: unknown) => {
          throw forPrisma(error);
        }),
    connect: async () => {
      const held = await holdConnection(pool, calls).catch((error: unknown) => {
        throw forPrisma(error);
      });
      let client: PgQueryClient;
      try {
        client = pgClient(held.client);
      } catch (error) {
        await held.release();
        throw error;
      }
      const query = async (config: unknown, values?: unknown) => {
        const stopped = held.stopped();
        if (stopped) throw forPrisma(stopped);
        try {
          return await client.query(config, values);
        } catch (error) {
          // A statement cut off by the deadline or the lease's end says so, not "connection closed".
          throw forPrisma(await held.failure(error));
        }
      };
      return {
        query,
        on: (event: "error", listener: (error: Error) => void) => client.on(event, listener),
        removeListener: (event: "error", listener: (error: Error) => void) => client.removeListener(event, listener),
        // Prisma sends COMMIT or ROLLBACK itself, then releases: the connection is closed, then the slot given back.
        release: () => void held.release(),
      };
    },
    // The pool opens nothing of its own; the leased connections are closed with their leases.
    end: async () => {},
  });
}

// The pool's driver must hand out node-postgres clients: Prisma's adapter speaks their API.
function pgClient(client: PgQueryClient): PgQueryClient {
  const c = client as Partial<PgQueryClient> | null;
  if (typeof c?.query === "function" && typeof c.on === "function" && typeof c.removeListener === "function")
    return client;
  throw new LeaseError(
    "INVALID_CONFIG",
    'leasegate/prisma runs on node-postgres clients: give the pool `driver` from "leasegate/pg"',
  );
}

/**
 * A statement the server refused leaves as the driver's error, which `PrismaPg` maps to Prisma's
 * codes (`P2002`, …). Everything else (overload, a passed deadline, a lost lease, the database
 * unreachable) leaves as leasegate's `LeaseError`. Prisma turns an error with a `code` into its own
 * `PrismaClientKnownRequestError`, keeping only `code` and `meta`: the error it is given carries
 * the original in `meta.leaseError`, for {@link leaseErrorOf}.
 */
function forPrisma(error: unknown): unknown {
  if (!isLeaseError(error)) return error;
  if (error.code === "DATABASE_ERROR" && sqlState(error.cause) !== undefined) return error.cause;
  const { code, message, retryAfterMs, executed } = error;
  return Object.assign(new LeaseError(code, message, { cause: error, retryAfterMs, executed }), {
    meta: { leaseError: error },
  });
}

/**
 * The `LeaseError` behind an error Prisma threw (its `PrismaClientKnownRequestError` keeps the
 * code, not the error), or `error` itself when it is one; undefined for anything else. Pass it to
 * `errorResponse` for the 503 with `Retry-After` of an overload.
 *
 * @example
 * catch (error) { return errorResponse(leaseErrorOf(error) ?? error) }
 */
export function leaseErrorOf(error: unknown): LeaseError | undefined {
  if (isLeaseError(error)) return error;
  const carried = (error as { meta?: { leaseError?: unknown } } | null)?.meta?.leaseError;
  return isLeaseError(carried) ? carried : undefined;
}
