import type { Sql } from "postgres";
import {
  type ControlResult,
  type OperatorStats,
  type PoolStats,
  type Reconciliation,
  type RevokeResult,
  LeaseError,
  checkInt,
  expected,
  isLeaseError,
} from "../core/index.ts";
import { GENRES } from "../db/schema.ts";
import { OPERATOR_OFF, authorize } from "./auth.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";
import { METRICS_CONTENT_TYPE, formatMetrics } from "./metrics.ts";
import { allowMethods, errorResponse, fail, json } from "./respond.ts";

/** Runs `fn` with a database client while holding one lease (or none, with the coordinator off). */
export type WithDatabase = <T>(fn: (sql: Sql) => Promise<T>, options: { holder: string; waitMs?: number }) => Promise<T>;

/** What the example app needs from its runtime: the Worker and the local server supply these. */
export interface AppDeps {
  withDatabase: WithDatabase;
  /** The coordinator's live state; undefined with `COORDINATOR=off`. */
  stats: (() => Promise<PoolStats>) | undefined;
  debugToken: string | undefined;
  pool: string;
  /** The live controls and the operator's view; undefined with `COORDINATOR=off`. */
  operator?: OperatorControls | undefined;
  /** The database layer's circuit breaker and safe mode, as plain data (shown in /health and stats). */
  status?: (() => { breaker: unknown; safeMode: unknown }) | undefined;
}

/** What the operator endpoints drive: the coordinator's controls plus one reconciliation run. */
export interface OperatorControls {
  stats(): Promise<OperatorStats>;
  pause(): Promise<ControlResult>;
  resume(): Promise<ControlResult>;
  /** `null` returns to the configured default. */
  setLimit(limit: number | null): Promise<ControlResult>;
  /** Frees a held lease by its id or an unambiguous prefix of at least 8 characters. */
  revoke(idOrPrefix: string): Promise<RevokeResult>;
  /** Reads `pg_stat_activity` now and compares it with the held leases. */
  reconcile(): Promise<Reconciliation>;
}

const MAX_BODY_BYTES = 16 * 1024;

async function readJson(request: Request): Promise<Record<string, unknown>> {
  const length = Number(request.headers.get("content-length") ?? "0");
  if (length > MAX_BODY_BYTES) fail("PAYLOAD_TOO_LARGE", `Body exceeds ${MAX_BODY_BYTES} bytes`);
  const text = await request.text();
  if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) fail("PAYLOAD_TOO_LARGE", `Body exceeds ${MAX_BODY_BYTES} bytes`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    fail("INVALID_ARGUMENT", "Body is not valid JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    fail("INVALID_ARGUMENT", expected("body", "a JSON object", body));
  }
  return body as Record<string, unknown>;
}

function text(body: Record<string, unknown>, name: string, max: number): string {
  const value = body[name];
  if (typeof value !== "string" || value.trim().length === 0 || value.length > max) {
    fail("INVALID_ARGUMENT", expected(name, `a non-empty string of at most ${max} characters`, value));
  }
  return value.trim();
}

function intParam(url: URL, name: string, fallback: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null) return fallback;
  if (!/^\d{1,9}$/.test(raw)) fail("INVALID_ARGUMENT", expected(name, `an integer from ${min} to ${max}`, raw));
  return checkInt(name, Number(raw), min, max);
}

const PITCH_COLUMNS = "id, title, logline, genre, author, is_public, view_count, created_at";

async function pitches(request: Request, url: URL, path: string, deps: AppDeps, holder: string): Promise<Response> {
  const run = <T>(fn: (sql: Sql) => Promise<T>) => deps.withDatabase(fn, { holder });
  if (path === "/api/pitches/trending") {
    allowMethods(request, "GET");
    const limit = intParam(url, "limit", 10, 1, 50);
    const rows = await run((sql) => sql`
      SELECT ${sql.unsafe(PITCH_COLUMNS)} FROM pitches
      WHERE is_public ORDER BY view_count DESC, id LIMIT ${limit}`);
    return json({ pitches: rows });
  }
  if (path === "/api/pitches/public") {
    allowMethods(request, "GET");
    const limit = intParam(url, "limit", 20, 1, 100);
    const offset = intParam(url, "offset", 0, 0, 100_000);
    const rows = await run((sql) => sql`
      SELECT ${sql.unsafe(PITCH_COLUMNS)} FROM pitches
      WHERE is_public ORDER BY created_at DESC, id DESC LIMIT ${limit} OFFSET ${offset}`);
    return json({ pitches: rows, limit, offset });
  }
  if (path === "/api/pitches") {
    allowMethods(request, "POST");
    const body = await readJson(request);
    const genre = body.genre;
    if (typeof genre !== "string" || !(GENRES as readonly string[]).includes(genre)) {
      fail("INVALID_ARGUMENT", expected("genre", `one of ${GENRES.join(", ")}`, genre));
    }
    const isPublic = body.isPublic ?? true;
    if (typeof isPublic !== "boolean") fail("INVALID_ARGUMENT", expected("isPublic", "a boolean", isPublic));
    const pitch = {
      title: text(body, "title", 200),
      logline: text(body, "logline", 1000),
      author: text(body, "author", 100),
      genre,
      is_public: isPublic,
    };
    const [row] = await run((sql) => sql`
      INSERT INTO pitches ${sql(pitch, "title", "logline", "author", "genre", "is_public")}
      RETURNING ${sql.unsafe(PITCH_COLUMNS)}`);
    return json({ pitch: row }, 201);
  }
  const match = /^\/api\/pitches\/([^/]+)$/.exec(path);
  if (match) {
    allowMethods(request, "GET");
    const raw = match[1]!;
    if (!/^[1-9]\d{0,15}$/.test(raw)) fail("INVALID_ARGUMENT", expected("id", "a positive integer", raw));
    const [row] = await run((sql) => sql`
      UPDATE pitches SET view_count = view_count + 1 WHERE id = ${raw} AND is_public
      RETURNING ${sql.unsafe(PITCH_COLUMNS)}`);
    if (!row) fail("NOT_FOUND", `No public pitch ${raw}`);
    return json({ pitch: row });
  }
  return fail("NOT_FOUND", "No such endpoint");
}

async function health(deps: AppDeps, holder: string): Promise<Response> {
  let coordinator: "up" | "down" | "off" = "off";
  if (deps.stats) {
    try {
      await deps.stats();
      coordinator = "up";
    } catch {
      coordinator = "down";
    }
  }
  let database: "up" | "down" | "saturated" = "up";
  try {
    await deps.withDatabase((sql) => sql`SELECT 1`, { holder, waitMs: 1000 });
  } catch (error) {
    const code = isLeaseError(error) ? error.code : "";
    // A full pool means the database answers, just not for one more caller right now.
    database = code === "QUEUE_FULL" || code === "ACQUIRE_TIMEOUT" ? "saturated" : "down";
  }
  const healthy = database !== "down" && coordinator !== "down";
  const status = !healthy ? "unavailable" : database === "saturated" ? "degraded" : "ok";
  return json({ status, database, coordinator, ...deps.status?.() }, healthy ? 200 : 503);
}

/** Turns a control's failure result back into the error it stands for. */
function controlled<T extends { ok: boolean }>(result: T | { ok: false; code: LeaseError["code"]; message: string }): T {
  if (!result.ok) {
    const failure = result as { code: LeaseError["code"]; message: string };
    throw new LeaseError(failure.code, failure.message);
  }
  return result as T;
}

async function operator(request: Request, path: string, deps: AppDeps): Promise<Response> {
  // The page itself holds no data: a browser cannot send a bearer token on navigation, so it is
  // served to anyone once a token is configured, and its script calls the endpoints below with it.
  if (path === "/__coordinator") {
    if (!deps.debugToken) fail("NOT_FOUND", OPERATOR_OFF);
    allowMethods(request, "GET");
    return new Response(DASHBOARD_HTML, {
      headers: {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
        "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        "referrer-policy": "no-referrer",
      },
    });
  }
  const denied = await authorize(request, deps.debugToken);
  if (denied) return denied;
  if (!deps.stats) fail("NOT_FOUND", "The coordinator is off (COORDINATOR=off)");
  const op = deps.operator;
  if (path === "/__coordinator/stats") {
    allowMethods(request, "GET");
    const resilience = deps.status?.() ?? { breaker: null, safeMode: null };
    return json({ pool: deps.pool, ...(op ? await op.stats() : await deps.stats()), ...resilience });
  }
  if (!op) return fail("NOT_FOUND", "No such endpoint");
  switch (path) {
    case "/__coordinator/metrics":
      allowMethods(request, "GET");
      return new Response(formatMetrics(deps.pool, await op.stats()), {
        headers: { "content-type": METRICS_CONTENT_TYPE, "cache-control": "no-store" },
      });
    case "/__coordinator/pause":
      allowMethods(request, "POST");
      return json({ pool: deps.pool, ...controlled(await op.pause()) });
    case "/__coordinator/resume":
      allowMethods(request, "POST");
      return json({ pool: deps.pool, ...controlled(await op.resume()) });
    case "/__coordinator/limit": {
      allowMethods(request, "POST");
      const body = await readJson(request);
      const limit = body.limit;
      if (limit !== null && (typeof limit !== "number" || !Number.isInteger(limit))) {
        fail("INVALID_ARGUMENT", expected("limit", "an integer, or null for the configured default", limit));
      }
      return json({ pool: deps.pool, ...controlled(await op.setLimit(limit)) });
    }
    case "/__coordinator/release": {
      allowMethods(request, "POST");
      const id = (await readJson(request)).id;
      if (typeof id !== "string") fail("INVALID_ARGUMENT", expected("id", "a lease id or its first 8+ characters", id));
      return json({ pool: deps.pool, ...controlled(await op.revoke(id)) });
    }
    case "/__coordinator/reconcile":
      allowMethods(request, "POST");
      return json({ pool: deps.pool, ...(await op.reconcile()) });
  }
  return fail("NOT_FOUND", "No such endpoint");
}

/**
 * The example app's HTTP contract, the same from the Worker and the local server.
 *
 * @example
 * export default { fetch: (req, env, ctx) => handle(req, depsFor(env, ctx)) };
 */
export async function handle(request: Request, deps: AppDeps): Promise<Response> {
  const url = new URL(request.url);
  const path = url.pathname.length > 1 && url.pathname.endsWith("/") ? url.pathname.slice(0, -1) : url.pathname;
  const holder = `${request.method} ${path.slice(0, 100)} ${request.headers.get("cf-ray") ?? ""}`.trim();
  try {
    if (path === "/health") return await health(deps, holder);
    if (path.startsWith("/api/pitches")) return await pitches(request, url, path, deps, holder);
    if (path === "/__coordinator" || path.startsWith("/__coordinator/")) return await operator(request, path, deps);
    return fail("NOT_FOUND", "No such endpoint");
  } catch (error) {
    return errorResponse(error);
  }
}

