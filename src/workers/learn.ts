/**
 * `LEASE_LIMIT=auto` on Workers: the Worker reads the room the database has (the coordinator
 * object cannot reach the database) and hands the counts to the object, which adds its own caps,
 * keeps the learned limit and applies it. Never on the path of a request's own lease: a request
 * that finds the value stale learns in `ctx.waitUntil`, the cron learns, and an operator can ask.
 */
import type { LearnResult, RoomReading } from "../core/index.ts";
import type { Connection } from "../db/driver.ts";
import { readRoomCounts, roomReading } from "../db/learn-limit.ts";
import type { CoordinatorBackend } from "../engine/coordinator.ts";

/** `application_name` of the learning's own connection: room taken, like any other client's. */
const LEARNER_APPLICATION_NAME = "leasegate-learn";

/** How the learning reaches the database (the pool's driver), the application's `application_name`, and how often it learns. */
export interface LearnTarget {
  /** Opens one connection outside any lease, named `applicationName`. */
  connect(applicationName: string): Promise<Connection>;
  applicationName: string;
  /** `LEASE_LEARN_INTERVAL_MS`: the pool's registration among the pools that learn lives three of them. */
  intervalMs: number;
}

/**
 * Reads the room through one short-lived connection outside any lease: the counts, or the
 * database's failure as a code and message.
 *
 * @example
 * const reading = await readRoom({ connect: (name) => driver.connect({ ...target, applicationName: name }), applicationName: "app", intervalMs: 10_000 });
 */
export function readRoom(target: LearnTarget): Promise<RoomReading> {
  return roomReading(async () => {
    const conn = await target.connect(LEARNER_APPLICATION_NAME);
    try {
      return await readRoomCounts(conn, target.applicationName, target.intervalMs);
    } finally {
      await conn.close();
    }
  });
}

/**
 * Reads the room and hands the reading to the coordinator, which answers the learned limit in
 * force — or the reading's failure (`DATABASE_UNAVAILABLE`, `DATABASE_ERROR`), which it keeps for
 * operators while the last learned limit stays.
 *
 * @example
 * const result = await learnNow(stub, target);
 */
export async function learnNow(
  coordinator: Pick<CoordinatorBackend, "learnLimit">,
  target: LearnTarget,
): Promise<LearnResult> {
  return await coordinator.learnLimit(await readRoom(target));
}

/** When this isolate last asked each pool's coordinator whether a learning is due. */
const askedAt = new Map<string, number>();

/**
 * On a request: at most once per interval per isolate, asks the coordinator (in `waitUntil`, off
 * the request's path) whether the learned limit is stale, and if this isolate got the claim, learns
 * it. Across isolates the object's claim keeps it to about one learning per its own interval.
 *
 * @example
 * learnWhenStale(stub, target, "main", (p) => ctx.waitUntil(p));
 */
export function learnWhenStale(
  coordinator: Pick<CoordinatorBackend, "learnDue" | "learnLimit">,
  target: LearnTarget,
  pool: string,
  waitUntil: (promise: Promise<unknown>) => void,
): void {
  const now = Date.now();
  const last = askedAt.get(pool);
  if (last !== undefined && now - last < target.intervalMs) return;
  askedAt.set(pool, now);
  waitUntil(
    (async () => {
      if (await coordinator.learnDue()) await learnNow(coordinator, target);
    })().catch(() => {
      // The coordinator keeps a reading's failure; an unreachable coordinator is tried next interval.
    }),
  );
}
