// main.ts: Node 22.18 or later, in a package with "type": "module" (node main.ts);
// processes sharing DATABASE_URL and LEASE_POOL share one limit
import { localPool } from "leasegate/local";
import { driver } from "leasegate/postgres";

const pool = await localPool(process.env, { driver }); // DATABASE_URL, LEASE_*, DB_*: the Worker's names
// One lease, one fresh connection, closed before the slot is given back; retryable failures retried.
const rows = await pool.sql((sql) => sql`SELECT 1 AS one`);
console.log(rows, (await pool.leases?.stats())?.counters);
await pool.close();
