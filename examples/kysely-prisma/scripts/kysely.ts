// scripts/kysely.ts: Kysely on Node, each connection leased from the local adapter (`node scripts/kysely.ts`)
import { Kysely, sql } from "kysely";
import { LeasedDialect } from "leasegate/kysely";
import { localPool } from "leasegate/local";
import { driver } from "leasegate/pg";
import { CREATE_NOTES, type Database } from "#schema";

// DATABASE_URL, LEASE_LIMIT, LEASE_WAIT_MS, …: the same variables as the Worker's.
const pool = await localPool(process.env, { driver });
const db = new Kysely<Database>({ dialect: new LeasedDialect({ pool, holder: "kysely-script" }) });
try {
  await sql.raw(CREATE_NOTES).execute(db);
  const note = await db
    .transaction()
    .execute((trx) =>
      trx.insertInto("orm_notes").values({ body: "from Node" }).returning("id").executeTakeFirstOrThrow(),
    );
  const { n } = await db
    .selectFrom("orm_notes")
    .select((eb) => eb.fn.countAll<string>().as("n"))
    .executeTakeFirstOrThrow();
  console.log(`kysely: wrote note ${note.id}; ${n} notes`);
} finally {
  await db.destroy();
  await pool.close();
}
