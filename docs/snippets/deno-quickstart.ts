// main.ts: deno run --allow-net --allow-env --allow-read --allow-sys main.ts
// (`leasegate` and `postgres` from npm, e.g. `deno add npm:leasegate npm:postgres`)
import postgres from "postgres";
import { Leases, configFromEnv } from "leasegate";
import { PostgresCoordinator } from "leasegate/local";

/** The one Deno API used here (the project's type check runs with Node's types). */
declare const Deno: { env: { toObject(): Record<string, string> } };

const env = Deno.env.toObject();
const url = env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const control = postgres(url, { max: 2 });
const coordinator = new PostgresCoordinator({ sql: control, pool: "main", config: configFromEnv(env) });
const leases = new Leases(coordinator, { holder: "deno" });

const rows = await leases.withLease(async ({ beforeRelease }) => {
  const db = postgres(url, { max: 1 });
  beforeRelease(() => db.end({ timeout: 0 }));
  return await db`SELECT 1 AS one`;
});
console.log(rows);

await coordinator.close();
await control.end();
