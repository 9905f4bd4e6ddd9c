/**
 * The operator surface as one mountable handler: the stats JSON, Prometheus metrics, the dashboard
 * page and the live controls (pause, resume, limit, release, reconcile) under a prefix, behind a
 * bearer token. A plain `(Request) => Promise<Response | undefined>`, so any router can call it.
 */
import {
  type ConnectionCounts,
  type Failure,
  type LearnResult,
  type Layout,
  type OperatorStats,
  type PoolStats,
  type Reconciliation,
  type RoomReading,
  FIXED_LIMIT,
  LeaseError,
  expected,
} from "../core/index.ts";
import type { LayoutResult } from "../core/shares.ts";
import type { OperatorCoordinator } from "../engine/coordinator.ts";
import { OPERATOR_OFF, authorize } from "./auth.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";
import { METRICS_CONTENT_TYPE, formatMetrics } from "./metrics.ts";
import { HttpError, allowMethods, errorResponse, json, readJson } from "./respond.ts";

export type { OperatorCoordinator } from "../engine/coordinator.ts";

/**
 * What the operator endpoints read and drive: a coordinator's operator calls, with `stats` for
 * `operatorStats` and a `reconcile` that reads `pg_stat_activity` itself.
 * `workerPool(...).operator` (Workers) and `localPool(...).operator` (Node, Deno) are these.
 * Derived from the interface: a call added to `CoordinatorBackend` shows up here, and in every place
 * that must answer it (`controlsOf`, the sharded controls, the endpoint table below).
 */
export interface OperatorControls
  extends Omit<OperatorCoordinator, "operatorStats" | "reconcile" | "learnDue" | "learnLimit"> {
  stats(): Promise<OperatorStats>;
  /** Reads `pg_stat_activity` now and compares it with the held leases. */
  reconcile(): Promise<Reconciliation>;
  /** `LEASE_LIMIT=auto`: reads the room now and hands it to `learnLimit`; absent for a fixed limit. */
  learn?: (() => Promise<LearnResult>) | undefined;
  /** A sharded pool (`LEASE_SHARDS` > 1): the root's layout, `null` back to `LEASE_SHARDS`; absent otherwise. */
  setLayout?: ((layout: Layout | null) => Promise<LayoutResult>) | undefined;
}

/**
 * The controls of one coordinator; `counts` reads `pg_stat_activity` the way the runtime can
 * (Workers: a short connection through Hyperdrive; Node and Deno: the coordinator's own client),
 * and `room`, with `LEASE_LIMIT=auto`, the room the learned limit is made of.
 *
 * @example
 * const controls = controlsOf(coordinator, () => coordinator.countConnections("my-app"));
 */
export function controlsOf(
  coordinator: OperatorCoordinator,
  counts: () => Promise<ConnectionCounts>,
  room?: () => Promise<RoomReading>,
): OperatorControls {
  return {
    ...(room && { learn: async () => coordinator.learnLimit(await room()) }),
    stats: () => coordinator.operatorStats(),
    pause: () => coordinator.pause(),
    resume: () => coordinator.resume(),
    setLimit: (limit) => coordinator.setLimit(limit),
    revoke: (id) => coordinator.revoke(id),
    reconcile: async () => {
      const { ok: _, ...reconciliation } = controlled(await coordinator.reconcile(await counts()));
      return reconciliation;
    },
  };
}

/** Options of {@link operatorHandler}. */
export interface OperatorHandlerOptions {
  /** The pool's controls; undefined when the coordinator is off (the endpoints then say so). */
  controls: OperatorControls | undefined;
  /** The bearer token; unset or empty turns the endpoints off (404 saying how to turn them on). */
  token: string | undefined;
  /** Shown in every answer. Default `main`. */
  pool?: string | undefined;
  /** Where the endpoints live. Default `/__coordinator`. */
  prefix?: string | undefined;
  /** Extra fields for the stats answer, e.g. the database layer's breaker and safe mode. */
  status?: (() => Record<string, unknown>) | undefined;
  /** Stats when `controls` is undefined but a coordinator still answers (a plain `stats()`). */
  stats?: (() => Promise<PoolStats>) | undefined;
}

/** A control's failure result back into the error it stands for. */
function controlled<T extends { ok: true }>(result: T | Failure): T {
  if (!result.ok) throw new LeaseError(result.code, result.message);
  return result;
}

/** The dashboard page: no data of its own (a browser cannot send a token on navigation). */
function dashboard(request: Request, token: string | undefined): Response {
  if (!token) throw new HttpError("NOT_FOUND", OPERATOR_OFF);
  allowMethods(request, "GET");
  return new Response(DASHBOARD_HTML, {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      "content-security-policy":
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
      "referrer-policy": "no-referrer",
    },
  });
}

async function limitOf(request: Request): Promise<number | null> {
  const limit = (await readJson(request)).limit;
  if (limit !== null && (typeof limit !== "number" || !Number.isInteger(limit))) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("limit", "an integer, or null for the configured default", limit),
    );
  }
  return limit;
}

/** `{"count": n, "split": "demand" | "even"}`, or `{"count": null}` for the configured layout (checked by the root). */
async function layoutOf(request: Request): Promise<Layout | null> {
  const body = await readJson(request);
  return body.count === null ? null : ({ count: body.count, split: body.split ?? "demand" } as Layout);
}

async function idOf(request: Request): Promise<string> {
  const id = (await readJson(request)).id;
  if (typeof id !== "string")
    throw new LeaseError("INVALID_ARGUMENT", expected("id", "a lease id or its first 8+ characters", id));
  return id;
}

/**
 * Every control's endpoint (`POST <prefix>/<path>`), keyed by the control it drives: a control
 * without an endpoint does not compile.
 */
const CONTROLS: {
  [K in Exclude<keyof OperatorControls, "stats">]: {
    path: string;
    run(op: OperatorControls, request: Request): Promise<object>;
  };
} = {
  pause: { path: "pause", run: async (op) => controlled(await op.pause()) },
  resume: { path: "resume", run: async (op) => controlled(await op.resume()) },
  setLimit: { path: "limit", run: async (op, request) => controlled(await op.setLimit(await limitOf(request))) },
  revoke: { path: "release", run: async (op, request) => controlled(await op.revoke(await idOf(request))) },
  reconcile: { path: "reconcile", run: (op) => op.reconcile() },
  setLayout: {
    path: "layout",
    run: async (op, request) => {
      if (!op.setLayout)
        throw new LeaseError("INVALID_ARGUMENT", "This pool has one coordinator object: set LEASE_SHARDS to shard it");
      return controlled(await op.setLayout(await layoutOf(request)));
    },
  },
  learn: {
    path: "learn",
    run: async (op) => {
      if (!op.learn) throw new LeaseError("INVALID_ARGUMENT", FIXED_LIMIT);
      return controlled(await op.learn());
    },
  },
};

/** One endpoint below the prefix, once the token passed. */
async function endpoint(request: Request, name: string, o: OperatorHandlerOptions, pool: string): Promise<Response> {
  const op = o.controls;
  if (name === "stats") {
    allowMethods(request, "GET");
    const stats = op ? await op.stats() : o.stats ? await o.stats() : undefined;
    if (!stats) throw new HttpError("NOT_FOUND", "The coordinator is off (COORDINATOR=off)");
    return json({ pool, ...stats, ...o.status?.() });
  }
  if (!op) throw new HttpError("NOT_FOUND", "The coordinator is off (COORDINATOR=off)");
  if (name === "metrics") {
    allowMethods(request, "GET");
    return new Response(formatMetrics(pool, await op.stats()), {
      headers: { "content-type": METRICS_CONTENT_TYPE, "cache-control": "no-store" },
    });
  }
  const control = Object.values(CONTROLS).find((c) => c.path === name);
  if (!control) throw new HttpError("NOT_FOUND", "No such endpoint");
  allowMethods(request, "POST");
  return json({ pool, ...(await control.run(op, request)) });
}

/**
 * The operator endpoints under `prefix` (default `/__coordinator`): `GET stats`, `GET metrics`
 * (Prometheus), the dashboard page at the prefix itself, `POST pause`, `resume`, `limit`
 * (`{"limit": n | null}`), `release` (`{"id": "3f2a9c1b"}`), `reconcile`, `layout` (a sharded
 * pool: `{"count": n, "split": "demand" | "even"}`, or `{"count": null}`), `learn` (with
 * `LEASE_LIMIT=auto`: learn the limit from the database now) — every one behind the
 * bearer `token` but the page, which holds no data. Answers `undefined` for paths outside the
 * prefix, so the app's own routes go on.
 *
 * @example
 * const operator = operatorHandler({ controls: pool.operator, token: env.DEBUG_TOKEN });
 * export default { fetch: async (req) => (await operator(req)) ?? app.fetch(req) };
 */
export function operatorHandler(options: OperatorHandlerOptions): (request: Request) => Promise<Response | undefined> {
  const prefix = (options.prefix ?? "/__coordinator").replace(/\/+$/, "");
  const pool = options.pool ?? "main";
  return async (request) => {
    const path = new URL(request.url).pathname.replace(/\/+$/, "");
    if (path !== prefix && !path.startsWith(`${prefix}/`)) return undefined;
    try {
      if (path === prefix) return dashboard(request, options.token);
      const denied = await authorize(request, options.token);
      if (denied) return denied;
      return await endpoint(request, path.slice(prefix.length + 1), options, pool);
    } catch (error) {
      return errorResponse(error);
    }
  };
}
