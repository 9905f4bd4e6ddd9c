/**
 * `LEASE_LIMIT=auto` on Workers: the Worker reads the room the database has (the coordinator
 * object cannot reach the database) and hands the terms to the object, which keeps the learned
 * limit and applies it. Never on the path of a request's own lease: a request that finds the value
 * stale learns in `ctx.waitUntil`, the cron learns, and an operator can ask.
 */
import type { Failure, LearnFailure, LearnSettings, LearnedLimit, LimitSource, RoomTerms } from "../core/index.ts";
import { LeaseError } from "../core/index.ts";
import type { Connection } from "../db/driver.ts";
import { toDatabaseError } from "../db/errors.ts";
import { readRoomTerms } from "../db/learn-limit.ts";

/** `application_name` of the learning's own connection: room taken, like any other client's. */
const LEARNER_APPLICATION_NAME = "leasegate-learn";

/** What a learning answers: the limit in force, where it comes from, and the learning. */
export type LearnAnswer = { ok: true; limit: number; limitSource: LimitSource; learned: LearnedLimit | null } | Failure;

/** What the coordinator object offers the learning (its RPC methods). */
export interface LearningCoordinator {
  /** True when the learned limit is older than `intervalMs` and nobody else is learning it now (claims it). */
  learnDue(intervalMs: number): Promise<boolean>;
  /** The terms one learning read: the object works out the limit, keeps it and applies it. */
  learnedLimit(terms: RoomTerms): Promise<LearnAnswer>;
  /** A learning that failed: the last learned limit stays; operators see why. */
  learnFailed(failure: LearnFailure): Promise<void>;
}

/** How the learning reaches the database (the pool's driver), and the application's `application_name`. */
export interface LearnTarget {
  /** Opens one connection outside any lease, named `applicationName`. */
  connect(applicationName: string): Promise<Connection>;
  applicationName: string;
}

/**
 * Reads the terms through one short-lived connection outside any lease and hands them to the
 * coordinator. A database failure is told to the coordinator (the limit stays) and thrown as a
 * `LeaseError` (`DATABASE_UNAVAILABLE`, `DATABASE_ERROR`).
 *
 * @example
 * const answer = await learnNow(stub, { connect: (name) => driver.connect({ ...target, applicationName: name }), applicationName: "app" }, settings);
 */
export async function learnNow(
  coordinator: LearningCoordinator,
  target: LearnTarget,
  settings: LearnSettings,
): Promise<LearnAnswer> {
  let terms: RoomTerms;
  let conn: Connection | undefined;
  try {
    conn = await target.connect(LEARNER_APPLICATION_NAME);
    terms = await readRoomTerms(conn, target.applicationName, settings);
  } catch (error) {
    const e = toDatabaseError(error);
    await coordinator.learnFailed({ at: Date.now(), code: e.code, message: e.message }).catch(() => {});
    throw e;
  } finally {
    await conn?.close();
  }
  const answer = await coordinator.learnedLimit(terms);
  if (!answer.ok) throw new LeaseError(answer.code, answer.message);
  return answer;
}

/** When this isolate last asked each pool's coordinator whether a learning is due. */
const askedAt = new Map<string, number>();

/**
 * On a request: at most once per interval per isolate, asks the coordinator (in `waitUntil`, off
 * the request's path) whether the learned limit is stale, and if this isolate got the claim, learns
 * it. Across isolates the object's claim keeps it to about one learning per interval.
 *
 * @example
 * learnWhenStale(stub, target, settings, "main", (p) => ctx.waitUntil(p));
 */
export function learnWhenStale(
  coordinator: LearningCoordinator,
  target: LearnTarget,
  settings: LearnSettings,
  pool: string,
  waitUntil: (promise: Promise<unknown>) => void,
): void {
  const now = Date.now();
  const last = askedAt.get(pool);
  if (last !== undefined && now - last < settings.intervalMs) return;
  askedAt.set(pool, now);
  waitUntil(
    (async () => {
      if (await coordinator.learnDue(settings.intervalMs)) await learnNow(coordinator, target, settings);
    })().catch(() => {
      // Told to the coordinator already when the database failed; the next interval tries again.
    }),
  );
}
