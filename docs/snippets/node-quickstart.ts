// main.ts: Node 22 (node main.ts); processes sharing DATABASE_URL and the pool name share one limit
import postgres from "postgres";
import { Leases, configFromEnv } from "leasegate";
import { PostgresCoordinator } from "leasegate/local";

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const control = postgres(url, { max: 2 }); // the coordinator's own connections
const coordinator = new PostgresCoordinator({ sql: control, pool: "main", config: configFromEnv(process.env) });
const leases = new Leases(coordinator, { holder: `pid ${process.pid}` });

const rows = await leases.withLease(async ({ beforeRelease }) => {
  const db = postgres(url, { max: 1 }); // the one connection this lease pays for
  beforeRelease(() => db.end({ timeout: 0 }));
  return await db`SELECT 1 AS one`;
});
console.log(rows);

await coordinator.close();
await control.end();
