import type { Sql, TransactionSql } from "postgres";

/** Any fixed number: the key of the advisory lock that serializes the example's schema and seed. */
const SCHEMA_LOCK = 7_401_310_002;

/**
 * The example app's schema: the pitch-sharing app whose connection outages motivated leasegate.
 * Idempotent: safe to run on every start, and from several processes at once (a deploy of several
 * replicas): they take turns under an advisory lock, so two never create the same type.
 *
 * @example
 * await migrate(sql);
 */
export async function migrate(sql: Sql): Promise<void> {
  // An application role may lack DDL rights on a schema someone else already migrated.
  if (await migrated(sql)) return;
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`;
    // Another process may have migrated while this one waited for the lock.
    if (await migrated(tx)) return;
    await tx`
      CREATE TABLE IF NOT EXISTS pitches (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
        logline     text NOT NULL CHECK (char_length(logline) BETWEEN 1 AND 1000),
        genre       text NOT NULL,
        author      text NOT NULL,
        is_public   boolean NOT NULL DEFAULT true,
        view_count  integer NOT NULL DEFAULT 0,
        created_at  timestamptz NOT NULL DEFAULT now()
      )`;
    await tx`CREATE INDEX IF NOT EXISTS pitches_trending ON pitches (view_count DESC) WHERE is_public`;
    await tx`CREATE INDEX IF NOT EXISTS pitches_public_recent ON pitches (created_at DESC, id DESC) WHERE is_public`;
  });
}

async function migrated(sql: Sql | TransactionSql): Promise<boolean> {
  const [{ exists }] = (await sql`SELECT to_regclass('public.pitches') IS NOT NULL AS exists`) as unknown as [
    { exists: boolean },
  ];
  return exists;
}

export const GENRES = ["drama", "comedy", "thriller", "horror", "sci-fi", "documentary", "animation"] as const;

/**
 * Seeds `count` deterministic pitches when the table is empty.
 *
 * @example
 * await migrate(sql); await seed(sql);
 */
export async function seed(sql: Sql, count = 200): Promise<number> {
  const empty = async (q: Sql | TransactionSql) =>
    ((await q`SELECT NOT EXISTS (SELECT 1 FROM pitches) AS empty`) as unknown as [{ empty: boolean }])[0].empty;
  if (!(await empty(sql))) return 0;
  // Processes that start together take turns: only the first one seeds.
  return await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`;
    if (!(await empty(tx))) return 0;
    return await insertPitches(tx, count);
  });
}

async function insertPitches(sql: TransactionSql, count: number): Promise<number> {
  const rows = Array.from({ length: count }, (_, i) => ({
    title: `Pitch ${i + 1}`,
    logline: `A ${GENRES[i % GENRES.length]} about connection number ${i + 1} and the pool that could not hold it.`,
    genre: GENRES[i % GENRES.length]!,
    author: `writer${(i * 7) % 23}`,
    is_public: i % 5 !== 0,
    view_count: (i * 7919) % 1000,
  }));
  await sql`INSERT INTO pitches ${sql(rows, "title", "logline", "genre", "author", "is_public", "view_count")}`;
  return count;
}
