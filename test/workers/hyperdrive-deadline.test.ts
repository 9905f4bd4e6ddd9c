import { env } from "cloudflare:workers";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";

// What reaches Postgres through Hyperdrive's local mode, in real workerd: a leased connection's
// startup parameters (statement_timeout from the deadline, client_connection_check_interval), and
// the cancel request that stops a statement when the deadline passes. Both drivers a Worker uses.
const APP = `hd-deadline-${Date.now()}`;
let admin: pg.Client;

beforeAll(async () => {
  admin = new pg.Client({ connectionString: env.HYPERDRIVE.connectionString, application_name: `${APP}-admin` });
  admin.on("error", () => {});
  await admin.connect();
});
afterAll(async () => {
  await admin.end();
});

const backends = async (app: string) =>
  (await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [app])).rows[0]
    .n as number;

function database(client: "postgres" | "pg", app: string, statementTimeout = "startup") {
  const config = databaseConfig({
    ...env,
    DATABASE_CLIENT: client,
    APPLICATION_NAME: app,
    DB_DEADLINE_MS: "5000",
    DB_STATEMENT_TIMEOUT: statementTimeout,
  });
  const leases = new Leases(env.COORDINATOR_DO.getByName(`hd-deadline-${app}`));
  return new Database({ name: app, driver: openDriver(config), leases, config, log: () => {} });
}

describe.each(["postgres", "pg"] as const)("through the HYPERDRIVE binding (local mode) with %s", (client) => {
  it("a leased connection starts with statement_timeout from the deadline and client_connection_check_interval 100ms", async () => {
    const db = database(client, `${APP}-${client}-settings`);
    const [row] = await db.query<{ st: string; cc: string; it: string }>(
      "SELECT current_setting('statement_timeout') AS st, current_setting('client_connection_check_interval') AS cc, current_setting('idle_in_transaction_session_timeout') AS it",
    );
    // What was left of the 5 s deadline at connect: 4.9xx s, shown as ms (or "5s" when exact).
    expect(row!.st).toMatch(/^4\d{3}ms$|^5s$/);
    expect(row!.it).toBe(row!.st);
    expect(row!.cc).toBe("100ms");
  });

  // With DB_STATEMENT_TIMEOUT=off the connection has no check interval: closing it alone would leave
  // the statement running its 5 s. Only the cancel request, through Hyperdrive, stops it this soon.
  it("a pg_sleep(5) with a 1000 ms deadline: DEADLINE_EXCEEDED at ~1 s, its cancel request passes Hyperdrive, the backend gone", async () => {
    const app = `${APP}-${client}-sleep`;
    const db = database(client, app, "off");
    const samples: Array<{ at: number; n: number }> = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push({ at: Date.now(), n: await backends(app) });
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const started = Date.now();
    const error = await db.query("SELECT pg_sleep(5)", [], { deadlineMs: 1000 }).catch((e: unknown) => e);
    const answeredAt = Date.now();
    expect(isLeaseError(error) && { code: error.code, executed: error.executed }).toEqual({
      code: "DEADLINE_EXCEEDED",
      executed: "maybe",
    });
    expect(answeredAt - started).toBeGreaterThanOrEqual(990);
    expect(answeredAt - started).toBeLessThan(1300);
    for (let i = 0; i < 300 && !samples.some((s) => s.at >= answeredAt && s.n === 0); i++)
      await new Promise((r) => setTimeout(r, 10));
    sampling = false;
    await sampler;
    expect(Math.max(...samples.map((s) => s.n))).toBe(1);
    const gone = samples.find((s) => s.at >= answeredAt && s.n === 0);
    expect(gone).toBeDefined();
    const goneMs = gone!.at - answeredAt;
    expect(goneMs).toBeLessThanOrEqual(150);
    console.log(
      `figure workerd hyperdrive-local ${client}: deadline answer ${answeredAt - started} ms; backend gone ${goneMs} ms after it`,
    );
  });
});
