import { bigint, integer, pgTable, text } from "drizzle-orm/pg-core";

/** The example schema's `pitches` table as Drizzle sees it (the tests' database is migrated with it). */
export const pitches = pgTable("pitches", {
  id: bigint("id", { mode: "number" }).primaryKey(),
  title: text("title").notNull(),
  logline: text("logline").notNull(),
  genre: text("genre").notNull(),
  author: text("author").notNull(),
  viewCount: integer("view_count").notNull(),
});
