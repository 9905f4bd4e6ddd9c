/**
 * `LEASE_LIMIT=auto` for the local adapter: one process at a time reads the room the database has
 * and writes the learned limit into the pool's row, where every process's next transition reads
 * it as the configured limit (an operator's override still wins, as it does over `LEASE_LIMIT`).
 */
import type { Sql, TransactionSql } from "postgres";
import { type LearnFailure, type LearnSettings, type LearnedLimit, learnedLimit, withCaps } from "../src/core/index.ts";
import { readRoomCounts } from "../src/db/learn-limit.ts";

/** First key of the two-key advisory lock one learner holds (a space apart from the pools' locks). */
const LEARN_LOCK = 7_401_310;

/** What the pool's row says of learning: the last learned limit and the last failure after it. */
export interface LearnRecord {
  learned: LearnedLimit | null;
  learnFailure: LearnFailure | null;
}

/**
 * Learns the limit once, unless another process learned it less than half an interval ago (or is
 * learning it right now): `force` (an operator's request) learns regardless. Answers the record
 * as it stands afterwards. The limit is written under the pool's lock, so no transition runs
 * between the old limit and the new one; the caller runs one transition after it to grant queued
 * callers a raise let in.
 *
 * @example
 * const { learned } = await learnOnce(sql, "main", { applicationName: "app", headroom: 2, limitMax: null, intervalMs: 10_000 }, false);
 */
export async function learnOnce(
  sql: Sql,
  pool: string,
  settings: LearnSettings & { applicationName: string },
  force: boolean,
): Promise<{ changed: boolean; record: LearnRecord }> {
  return await sql.begin(async (tx) => {
    if (force) await tx`SELECT pg_advisory_xact_lock(${LEARN_LOCK}, hashtext(${pool}))`;
    else {
      const [got] = await tx<
        { ok: boolean }[]
      >`SELECT pg_try_advisory_xact_lock(${LEARN_LOCK}, hashtext(${pool})) AS ok`;
      if (!got?.ok) return { changed: false, record: await readRecord(tx, pool) };
    }
    const before = await readRecord(tx, pool);
    const now = Date.now();
    if (!force && before.learned && now - before.learned.learnedAt < settings.intervalMs / 2)
      return { changed: false, record: before };
    const learned = learnedLimit(
      withCaps(await readRoomCounts(tx, settings.applicationName, settings.intervalMs), settings),
      now,
    );
    await writeLearned(tx, pool, learned);
    return { changed: before.learned?.limit !== learned.limit, record: { learned, learnFailure: null } };
  });
}

/**
 * Writes a learned limit into the pool's row under the pool's lock: a transition in flight ends
 * first, and the next one, in any process, loads the new limit.
 *
 * @example
 * await sql.begin((tx) => writeLearned(tx, "main", learned));
 */
export async function writeLearned(tx: Sql | TransactionSql, pool: string, learned: LearnedLimit): Promise<void> {
  await tx`SELECT pg_advisory_xact_lock(hashtext(${pool}))`;
  await tx`
    UPDATE leasegate_pools
    SET config = config || jsonb_build_object('limit', ${learned.limit}::int, 'learned', ${JSON.stringify(learned)}::text::jsonb, 'learnFailure', null)
    WHERE pool = ${pool}`;
}

/**
 * Notes a failed learning in the pool's row (the limit stays); best effort, since the failure is
 * often the database itself.
 *
 * @example
 * await noteLearnFailure(sql, "main", { at: Date.now(), code: "DATABASE_UNAVAILABLE", message }).catch(() => {});
 */
export async function noteLearnFailure(sql: Sql, pool: string, failure: LearnFailure): Promise<void> {
  await sql`UPDATE leasegate_pools SET config = config || jsonb_build_object('learnFailure', ${JSON.stringify(failure)}::text::jsonb) WHERE pool = ${pool}`;
}

/**
 * The learning record from the pool's row.
 *
 * @example
 * const { learned, learnFailure } = await readRecord(sql, "main");
 */
export async function readRecord(sql: Sql | TransactionSql, pool: string): Promise<LearnRecord> {
  const [row] = await sql<{ learned: LearnedLimit | null; failure: LearnFailure | null }[]>`
    SELECT config->'learned' AS learned, config->'learnFailure' AS failure FROM leasegate_pools WHERE pool = ${pool}`;
  return { learned: row?.learned ?? null, learnFailure: row?.failure ?? null };
}
