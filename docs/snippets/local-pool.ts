// server.ts: the same on Node (node server.ts) or Deno, with the Postgres-backed coordinator
import { localPool, preflight } from "leasegate/local";

const env = process.env;
// A bad LEASE_* / DB_* value or an unreachable DATABASE_URL ends the start in one line.
const failure = await preflight(env, { url: env.DATABASE_URL, hint: "is Postgres running?" });
if (failure) {
  console.error(failure.line);
  process.exit(1);
}

const pool = await localPool(env);
try {
  const rows = await pool.db.transaction(async (tx) => {
    await tx.query("SELECT pg_advisory_xact_lock(1)");
    return tx.query("SELECT now() AS now");
  });
  console.log(rows, await pool.leases?.stats());
} finally {
  await pool.close();
}
