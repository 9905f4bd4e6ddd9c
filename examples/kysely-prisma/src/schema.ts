// The notes table, for Kysely's types and for the scripts that create it.
import type { Generated } from "kysely";

export interface Database {
  orm_notes: { id: Generated<number>; body: string };
}

export const CREATE_NOTES = "CREATE TABLE IF NOT EXISTS orm_notes (id serial PRIMARY KEY, body text NOT NULL)";
