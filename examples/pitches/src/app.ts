/**
 * The pitches app: a small realistic app (the endpoints of the pitch-sharing app whose outages
 * motivated leasegate) built only on the package's public entries. The Worker (`worker.ts`) and
 * the Node and Deno servers (`../local/`) serve this same HTTP contract from their own pool.
 */
import type { Sql } from "postgres";
import { type LeasedPool, LeaseError } from "leasegate";
import {
  HttpError,
  allowMethods,
  errorResponse,
  healthResponse,
  json,
  operatorHandler,
  readJson,
} from "leasegate/http";
import { GENRES } from "./schema.ts";

/** Where a request's time went, for its `Server-Timing` header: waiting for a lease, and the query. */
export interface RequestTiming {
  leaseMs?: number;
  dbMs?: number;
}

/** What the app needs from its runtime: the pool (Worker or local) and the operator token. */
export interface AppDeps {
  pool: LeasedPool<Sql>;
  debugToken: string | undefined;
  /** Receives the request's lease wait and query time (the last attempt's, after a retry). */
  timing?: RequestTiming | undefined;
}

/** The message of a bad input: what was expected and what came, bounded. */
function expected(name: string, what: string, got: unknown): string {
  const shown = typeof got === "string" ? JSON.stringify(got.slice(0, 40)) : String(got).slice(0, 40);
  return `Expected \`${name}\` to be ${what}, got \`${shown}\``;
}

function text(body: Record<string, unknown>, name: string, max: number): string {
  const value = body[name];
  if (typeof value !== "string" || value.trim().length === 0 || value.length > max) {
    throw new LeaseError("INVALID_ARGUMENT", expected(name, `a non-empty string of at most ${max} characters`, value));
  }
  return value.trim();
}

function intParam(url: URL, name: string, fallback: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null) return fallback;
  const value = /^\d{1,9}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(value >= min && value <= max))
    throw new LeaseError("INVALID_ARGUMENT", expected(name, `an integer from ${min} to ${max}`, raw));
  return value;
}

const PITCH_COLUMNS = "id, title, logline, genre, author, is_public, view_count, created_at";

type Run = <T>(fn: (sql: Sql) => Promise<T>) => Promise<T>;

async function createPitch(request: Request, run: Run): Promise<Response> {
  const body = await readJson(request);
  const genre = body.genre;
  if (typeof genre !== "string" || !(GENRES as readonly string[]).includes(genre)) {
    throw new LeaseError("INVALID_ARGUMENT", expected("genre", `one of ${GENRES.join(", ")}`, genre));
  }
  const isPublic = body.isPublic ?? true;
  if (typeof isPublic !== "boolean")
    throw new LeaseError("INVALID_ARGUMENT", expected("isPublic", "a boolean", isPublic));
  const pitch = {
    title: text(body, "title", 200),
    logline: text(body, "logline", 1000),
    author: text(body, "author", 100),
    genre,
    is_public: isPublic,
  };
  const [row] = await run(
    (sql) => sql`
    INSERT INTO pitches ${sql(pitch, "title", "logline", "author", "genre", "is_public")}
    RETURNING ${sql.unsafe(PITCH_COLUMNS)}`,
  );
  return json({ pitch: row }, 201);
}

async function viewPitch(raw: string, run: Run): Promise<Response> {
  if (!/^[1-9]\d{0,15}$/.test(raw)) throw new LeaseError("INVALID_ARGUMENT", expected("id", "a positive integer", raw));
  const [row] = await run(
    (sql) => sql`
    UPDATE pitches SET view_count = view_count + 1 WHERE id = ${raw} AND is_public
    RETURNING ${sql.unsafe(PITCH_COLUMNS)}`,
  );
  if (!row) throw new HttpError("NOT_FOUND", `No public pitch ${raw}`);
  return json({ pitch: row });
}

async function pitches(request: Request, url: URL, path: string, run: Run): Promise<Response> {
  if (path === "/api/pitches/trending") {
    allowMethods(request, "GET");
    const limit = intParam(url, "limit", 10, 1, 50);
    const rows = await run(
      (sql) => sql`
      SELECT ${sql.unsafe(PITCH_COLUMNS)} FROM pitches
      WHERE is_public ORDER BY view_count DESC, id LIMIT ${limit}`,
    );
    return json({ pitches: rows });
  }
  if (path === "/api/pitches/public") {
    allowMethods(request, "GET");
    const limit = intParam(url, "limit", 20, 1, 100);
    const offset = intParam(url, "offset", 0, 0, 100_000);
    const rows = await run(
      (sql) => sql`
      SELECT ${sql.unsafe(PITCH_COLUMNS)} FROM pitches
      WHERE is_public ORDER BY created_at DESC, id DESC LIMIT ${limit} OFFSET ${offset}`,
    );
    return json({ pitches: rows, limit, offset });
  }
  if (path === "/api/pitches") {
    allowMethods(request, "POST");
    return await createPitch(request, run);
  }
  const match = /^\/api\/pitches\/([^/]+)$/.exec(path);
  if (match) {
    allowMethods(request, "GET");
    return await viewPitch(match[1]!, run);
  }
  throw new HttpError("NOT_FOUND", "No such endpoint");
}

/** Runs a query under a lease as `holder`, noting the lease wait and query time. */
function runner(deps: AppDeps, holder: string, waitMs?: number): Run {
  const timing = deps.timing ?? {};
  return (fn) => {
    const asked = Date.now();
    return deps.pool.sql(
      async (sql) => {
        const leased = Date.now();
        timing.leaseMs = leased - asked;
        try {
          return await fn(sql);
        } finally {
          timing.dbMs = Date.now() - leased;
        }
      },
      { holder, waitMs },
    );
  };
}

/**
 * The app's HTTP contract, the same from the Worker and the local servers: `/health`,
 * `/api/pitches/*`, and the operator endpoints under `/__coordinator`.
 *
 * @example
 * export default { fetch: (req, env, ctx) => handle(req, { pool: workerPool(env, ctx), debugToken: env.DEBUG_TOKEN }) };
 */
export async function handle(request: Request, deps: AppDeps): Promise<Response> {
  const { pool } = deps;
  const url = new URL(request.url);
  const path = url.pathname.length > 1 && url.pathname.endsWith("/") ? url.pathname.slice(0, -1) : url.pathname;
  const holder = `${request.method} ${path.slice(0, 100)} ${request.headers.get("cf-ray") ?? ""}`.trim();
  const status = () => pool.db.status();
  const leases = pool.leases;
  const stats = leases && (() => leases.stats());
  try {
    const operator = operatorHandler({
      controls: pool.operator,
      token: deps.debugToken,
      pool: pool.name,
      status,
      stats,
    });
    const answered = await operator(request);
    if (answered) return answered;
    if (path === "/health") {
      const database = () => runner(deps, holder, 1000)((sql) => sql`SELECT 1`);
      return await healthResponse({ database, coordinator: stats, status });
    }
    if (path.startsWith("/api/pitches")) return await pitches(request, url, path, runner(deps, holder));
    throw new HttpError("NOT_FOUND", "No such endpoint");
  } catch (error) {
    return errorResponse(error);
  }
}
