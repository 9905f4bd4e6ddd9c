/**
 * leasegate for Hono: a middleware that gives each request a database client paid for by one
 * lease, opened on first use and always closed and released when the request ends.
 *
 * @example
 * import { leased } from "leasegate/hono";
 */
import type { Context, Env, MiddlewareHandler } from "hono";
import { createMiddleware } from "hono/factory";
import { holdLease, leaseFrame, runInFrame } from "./client/hold.ts";
import type { LeaseClient } from "./client/leases.ts";
import { type ErrorCode, BOUNDS, LeaseError, checkInt, expected, isLeaseError } from "./core/index.ts";
import type { ClientConnection, DriverModule } from "./db/driver.ts";
import { toDatabaseError } from "./db/errors.ts";
import { errorResponse } from "./http/respond.ts";

/** What `c.var.client()` hands out: opened (and connected) on its first call, the same client after. */
export type LeasedClient<C> = () => Promise<C>;

/** The `Variables` the middleware sets: `c.var.client`. */
export type LeasedVariables<C> = { client: LeasedClient<C> };

/** The middleware's Hono `Env`: the app's bindings (any unless `E` is given) and `c.var.client`. */
export type LeasedEnv<E extends Env, C> = { Bindings: E["Bindings"]; Variables: LeasedVariables<C> };

export interface LeasedOptions<E extends Env, C> {
  /**
   * The pool's leases: a `Leases` over the coordinator (the Durable Object stub, a local
   * `PostgresCoordinator`), a `ShardedLeases`, any `LeaseClient`; or a function of the request's
   * context returning one (Workers: stubs come from `c.env`).
   */
  leases: LeaseClient | ((c: Context<E>) => LeaseClient);
  /**
   * The driver that opens, cancels and closes the request's one connection: `driver` of
   * `leasegate/pg`, `leasegate/postgres`, `leasegate/neon` (with options: `driver({ ssl: true })`),
   * or any `DriverModule`. `c.var.client()` hands out its client (`pg.Client`, postgres.js `Sql`, …).
   */
  driver: DriverModule<C>;
  /** The database of the request: a Postgres URL (Workers: `c.env.HYPERDRIVE.connectionString`). */
  connectionString: (c: Context<E>) => string;
  /**
   * The connections' `application_name`. Default: `APPLICATION_NAME` of the app's bindings (as the
   * pool's own connections, so reconciliation and `LEASE_LIMIT=auto` count them as the app's), else
   * `leasegate`.
   */
  applicationName?: string | undefined;
  /** Gives up connecting after this long, ms. Default 5000. */
  connectTimeoutMs?: number | undefined;
  /** Queue deadline for the lease, ms. Default: the pool's (`LEASE_WAIT_MS`). */
  waitMs?: number | undefined;
  /** Lease lifetime, ms, renewed every third of it while the request runs. Default: the pool's (`LEASE_TTL_MS`). */
  ttlMs?: number | undefined;
  /** Who holds the lease, shown to operators. Default: the request's method and path. */
  holder?: ((c: Context<E>) => string) | undefined;
}

// The failures a client should retry later: answered 503 with Retry-After, whatever onError does.
const OVERLOAD: ReadonlySet<ErrorCode> = new Set([
  "QUEUE_FULL",
  "ACQUIRE_TIMEOUT",
  "DATABASE_UNAVAILABLE",
  "COORDINATOR_UNAVAILABLE",
]);

/**
 * The middleware: handlers call `await c.var.client()` to get a connected client under a lease.
 * The first call acquires the lease (waiting in the pool's queue up to `waitMs`) and connects;
 * later calls return the same client. When the handler is done — returned or thrown — the client
 * is closed and then the lease released, in `c.executionCtx.waitUntil` on Workers (off the
 * response path) and awaited elsewhere. A request that never calls it makes no coordinator call.
 * `QUEUE_FULL`, `ACQUIRE_TIMEOUT`, `COORDINATOR_UNAVAILABLE` and `DATABASE_UNAVAILABLE` (also a
 * driver's own connection failure, by its code) answer 503 with `Retry-After` and
 * `{"error": {"code", "message", "retryAfterMs"}}`; other errors go to the app's `onError`.
 * Use the client only within the request: it is closed when the handler returns.
 * When the lease is lost while the handler runs (revoked, a renewal refused, no renewal by its
 * expiry), the statement running on the client is cancelled (a Postgres cancel request with the
 * client's backend key) and the client closed, then the slot is given back; a handler that fails
 * after that answers 503 `LEASE_LOST`.
 *
 * @example
 * import { driver } from "leasegate/pg";
 * app.use("/api/*", leased({
 *   leases: (c) => new Leases(c.env.COORDINATOR.getByName("main")),
 *   driver,
 *   connectionString: (c) => c.env.HYPERDRIVE.connectionString,
 *   waitMs: 2000,
 * }));
 * app.get("/api/pitches", async (c) => c.json(await drizzle(await c.var.client()).select().from(pitches)));
 */
// `E` defaults to `any` so `c.env` needs no annotation; annotate a callback's `c: Context<AppEnv>` to check bindings.
// biome-ignore lint/suspicious/noExplicitAny: Hono's own default for an app's env; narrowed by the app's annotation.
export function leased<C, E extends Env = any>(options: LeasedOptions<E, C>): MiddlewareHandler<LeasedEnv<E, C>> {
  check(options);
  const { leases, driver, connectionString, waitMs, ttlMs, holder } = options;
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  const edge = typeof navigator !== "undefined" && navigator.userAgent === "Cloudflare-Workers";
  return createMiddleware<LeasedEnv<E, C>>(async (c, next) => {
    const ctx = c as unknown as Context<E>;
    const waitUntil = executionWaitUntil(c);
    // The handler runs in this frame: once its lease is taken, a second one of the same pool
    // (`pool.db.query` inside the handler, say) fails fast with NESTED_LEASE instead of waiting on itself.
    const frame = leaseFrame();
    let opened: Promise<C> | undefined;
    let held: Promise<void> | undefined;
    let ended = false;
    let lost: LeaseError | undefined;
    let end: () => void = () => {};
    const over = new Promise<void>((resolve) => (end = resolve));
    c.set("client", () => {
      if (ended)
        return Promise.reject(
          new LeaseError("INVALID_ARGUMENT", "`c.var.client()` was called after its request ended: the lease is gone"),
        );
      opened ??= new Promise<C>((resolve, reject) => {
        const client = typeof leases === "function" ? leases(ctx) : leases;
        // The lease is held until the request ends; the lifecycle closes the client, then releases.
        held = holdLease(
          client,
          async ({ beforeRelease, signal }) => {
            // Closing alone leaves a running statement running: cancel it first, then close; the
            // release's cleanup shares that close, so the slot waits for it.
            let stopping: Promise<unknown> | undefined;
            const halt = (conn: ClientConnection<C>) => (stopping ??= conn.cancel().then(() => conn.close()));
            let stopped: Promise<void> = new Promise(() => {});
            try {
              const applicationName = options.applicationName ?? bindingName(ctx) ?? "leasegate";
              const target = { connectionString: connectionString(ctx), applicationName, connectTimeoutMs, edge };
              const conn = await driver.connect(target);
              beforeRelease(() => stopping ?? conn.close());
              stopped = new Promise<void>((done) => {
                const stop = () => {
                  lost = new LeaseError(
                    "LEASE_LOST",
                    "The lease ended while the request ran: its statement was cancelled and its connection closed",
                    { retryAfterMs: 1000, executed: "maybe", cause: signal.reason },
                  );
                  void halt(conn).then(() => done());
                };
                if (signal.aborted) stop();
                else signal.addEventListener("abort", stop, { once: true });
              });
              resolve(conn.client);
            } catch (error) {
              throw toDatabaseError(error);
            }
            // The lease is held until the request ends, or until it is lost and the client stopped.
            await Promise.race([over, stopped]);
          },
          { holder: holder ? holder(ctx) : `${c.req.method} ${c.req.path}`, waitMs, ttlMs, waitUntil, frame },
        );
        held.catch(reject);
      });
      // A handler that started opening without awaiting must not turn a refusal into an
      // unhandled rejection; callers that await still get it.
      opened.catch(() => {});
      return opened;
    });
    try {
      await runInFrame(frame, next);
    } finally {
      ended = true;
      end();
      // An acquire or connect still under way (the handler did not await it) runs to its end:
      // whatever it ends up holding is closed and released, never left to the lease's TTL.
      // With `waitUntil` the lifecycle registered that already; elsewhere it is awaited here.
      if (held && !waitUntil) await held.catch(() => {});
    }
    // Hono has caught a handler's error already (`c.error`, answered by onError): overload answers
    // 503, and so does a handler that failed after its lease was lost (its statement was cancelled).
    const answer = c.error !== undefined && lost ? lost : overloaded(c.error);
    if (answer) {
      c.res = undefined;
      c.res = errorResponse(answer);
    }
  });
}

function check(options: unknown): void {
  const o = options as Partial<LeasedOptions<Env, unknown>> | null;
  if (typeof o !== "object" || o === null)
    throw new LeaseError("INVALID_ARGUMENT", expected("leased(options)", "an object", o));
  const isClient = (l: unknown) =>
    typeof l === "object" &&
    l !== null &&
    typeof (l as LeaseClient).acquire === "function" &&
    typeof (l as LeaseClient).release === "function";
  if (typeof o.leases !== "function" && !isClient(o.leases))
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("leases", "a LeaseClient or a function of the context returning one", o.leases),
    );
  const d = o.driver as Partial<DriverModule> | undefined;
  if (typeof d?.connect !== "function" || typeof d.name !== "string" || typeof d.packageName !== "string")
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("driver", 'a driver (`import { driver } from "leasegate/pg"`)', o.driver),
    );
  if (typeof o.connectionString !== "function")
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("connectionString", "a function of the context returning a Postgres URL", o.connectionString),
    );
  if (o.applicationName !== undefined && (typeof o.applicationName !== "string" || o.applicationName.length > 63))
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("applicationName", "a string of at most 63 characters", o.applicationName),
    );
  if (o.connectTimeoutMs !== undefined) checkInt("connectTimeoutMs", o.connectTimeoutMs, 100, 120_000);
  if (o.holder !== undefined && typeof o.holder !== "function")
    throw new LeaseError("INVALID_ARGUMENT", expected("holder", "a function of the context", o.holder));
  if (o.waitMs !== undefined) checkInt("waitMs", o.waitMs, 0, BOUNDS.waitMs);
  if (o.ttlMs !== undefined) checkInt("ttlMs", o.ttlMs, 1, BOUNDS.leaseTtlMs);
}

// `APPLICATION_NAME` of the app's bindings, when it is one (Workers: `env`; elsewhere often none).
function bindingName(c: Context): string | undefined {
  const name = (c.env as { APPLICATION_NAME?: unknown } | undefined)?.APPLICATION_NAME;
  return typeof name === "string" && name.trim() !== "" && name.length <= 63 ? name.trim() : undefined;
}

function executionWaitUntil(c: Context): ((promise: Promise<unknown>) => void) | undefined {
  try {
    // Hono's getter throws where the runtime gave no execution context (Node, Deno).
    const ctx = c.executionCtx;
    return (promise) => ctx.waitUntil(promise);
  } catch {
    return undefined;
  }
}

// A lease error with an overload code, or a driver error (or its cause: Drizzle wraps them) whose
// code says the database is unreachable. Judged by codes only, never by message text.
function overloaded(error: unknown): LeaseError | undefined {
  let current = error;
  for (let depth = 0; depth < 3 && typeof current === "object" && current !== null; depth++) {
    if (isLeaseError(current)) return OVERLOAD.has(current.code) ? current : undefined;
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && code !== "") {
      const e = toDatabaseError(current);
      return e.code === "DATABASE_UNAVAILABLE" ? e : undefined;
    }
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}
