import type { Sql } from "postgres";

/**
 * The example app's schema: the pitch-sharing app whose connection outages motivated leasegate.
 * Idempotent: safe to run on every start.
 */
export async function migrate(sql: Sql): Promise<void> {
  // An application role may lack DDL rights on a schema someone else already migrated.
  const [{ exists }] = (await sql`SELECT to_regclass('public.pitches') IS NOT NULL AS exists`) as unknown as [
    { exists: boolean },
  ];
  if (exists) return;
  await sql`
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
  await sql`CREATE INDEX IF NOT EXISTS pitches_trending ON pitches (view_count DESC) WHERE is_public`;
  await sql`CREATE INDEX IF NOT EXISTS pitches_public_recent ON pitches (created_at DESC, id DESC) WHERE is_public`;
}

export const GENRES = ["drama", "comedy", "thriller", "horror", "sci-fi", "documentary", "animation"] as const;

/**
 * Seeds `count` deterministic pitches when the table is empty.
 *
 * @example
 * await migrate(sql); await seed(sql);
 */
export async function seed(sql: Sql, count = 200): Promise<number> {
  const [{ n }] = (await sql`SELECT count(*)::int AS n FROM pitches`) as unknown as [{ n: number }];
  if (n > 0) return 0;
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
