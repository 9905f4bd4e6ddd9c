// main.ts: deno run --allow-net --allow-env --allow-read --allow-sys main.ts
// (`leasegate` and `postgres` installed in the folder's node_modules)
import { localPool } from "leasegate/local";
import { driver } from "leasegate/postgres";

/** The one Deno API used here (the project's type check runs with Node's types). */
declare const Deno: { env: { toObject(): Record<string, string> } };

const pool = await localPool(Deno.env.toObject(), { driver });
const rows = await pool.db.transaction(async (tx) => tx.query("SELECT 1 AS one"));
console.log(rows);
await pool.close();
