import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Leases } from "../../src/client/leases.ts";
import { databaseConfig } from "../../src/db/config.ts";
import { openDriver } from "../../src/db/connect.ts";
import { Database } from "../../src/db/database.ts";
import { captureLog, memoryCoordinator, TEST_URL } from "./helpers.ts";

// A real NOT NULL violation on the real Postgres of `npm test`, through each driver: the error
// log names the code, the table, the column and the caller's label, and holds none of the row's
// values, the parameters or the literals of the query, unless DB_LOG_DETAIL=on.
const TABLE = `log_detail_${process.pid}`;
const admin = postgres(TEST_URL, { max: 1, onnotice: () => {} });
beforeAll(() =>
  admin.unsafe(`CREATE TABLE IF NOT EXISTS ${TABLE} (id int PRIMARY KEY, email text, body text NOT NULL)`),
);
afterAll(async () => {
  await admin.unsafe(`DROP TABLE IF EXISTS ${TABLE}`);
  await admin.end();
});

async function failingInsert(env: Record<string, string>) {
  const config = databaseConfig({ DATABASE_URL: TEST_URL, DB_DEADLINE_MS: "5000", ...env });
  const log = captureLog();
  const db = new Database({
    name: "logs",
    driver: openDriver(config),
    leases: new Leases(memoryCoordinator()),
    config,
    log: log.write,
  });
  // A literal in the text and a parameter: both are personal data here.
  const error = await db
    .query(
      `INSERT INTO ${TABLE} (id, email, body) VALUES (4, 'literal.person@example.com', $1::text || NULL)`,
      ["param-secret-value"],
      {
        holder: "create-note",
      },
    )
    .catch((e: unknown) => e);
  expect((error as { code?: string }).code).toBe("DATABASE_ERROR");
  const line = log.raw.find((l) => l.includes('"database_error"'));
  expect(line, log.raw.join("\n")).toBeDefined();
  return line!;
}

describe.each([["postgres"], ["pg"]])("the database_error log line (%s)", (client) => {
  it("keeps the SQLSTATE, table, column and label, and no row value by default", async () => {
    const line = await failingInsert({ DATABASE_CLIENT: client });
    const entry = JSON.parse(line) as { code: string; holder: string; error: Record<string, unknown> };
    expect(entry).toMatchObject({ code: "DATABASE_ERROR", holder: "create-note" });
    expect(JSON.stringify(entry.error)).toContain('"23502"');
    expect(line).toContain(TABLE);
    expect(line).toContain('"body"');
    for (const value of ["literal.person@example.com", "param-secret-value", "Failing row", "(4,"])
      expect(line).not.toContain(value);
  });

  it("keeps the row's values with DB_LOG_DETAIL=on", async () => {
    const line = await failingInsert({ DATABASE_CLIENT: client, DB_LOG_DETAIL: "on" });
    expect(line).toContain("Failing row contains (4, literal.person@example.com");
    expect(line).toContain("23502");
  });
});

it("refuses a DB_LOG_DETAIL that is neither on nor off", () => {
  expect(() => databaseConfig({ DATABASE_URL: TEST_URL, DB_LOG_DETAIL: "yes" })).toThrow(/DB_LOG_DETAIL/);
});
