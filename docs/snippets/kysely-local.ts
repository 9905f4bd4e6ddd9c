import { type Generated, Kysely } from "kysely";
import { LeasedDialect } from "leasegate/kysely";
import { localPool } from "leasegate/local";
import { driver } from "leasegate/postgres";

interface Database {
  notes: { id: Generated<number>; body: string };
}

// One pool per process; every connection Kysely takes is one lease of it.
const pool = await localPool(process.env, { driver });
const db = new Kysely<Database>({ dialect: new LeasedDialect({ pool, holder: "worker-7", waitMs: 2000 }) });

// One query: one lease, one connection, closed before the slot is given back.
const latest = await db.selectFrom("notes").selectAll().orderBy("id", "desc").limit(10).execute();

// One transaction: one lease and one connection from BEGIN to COMMIT (ROLLBACK when it throws).
await db.transaction().execute(async (trx) => {
  const { id } = await trx.insertInto("notes").values({ body: "hello" }).returning("id").executeTakeFirstOrThrow();
  await trx
    .updateTable("notes")
    .set({ body: `hello #${id}` })
    .where("id", "=", id)
    .execute();
});

console.log(latest.length);
await db.destroy();
await pool.close();
