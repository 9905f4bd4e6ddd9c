import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";

// Replicas of one deploy start together against a new database: each runs the example's migration
// and seed. As OS processes, as `npm run start:local` starts them, on the real Postgres.

const root = join(import.meta.dirname, "..", "..");
const testUrl = new URL(process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
const admin = postgres(testUrl.toString(), { max: 1, onnotice: () => {} });
const created: string[] = [];
const role = `leasegate_together_${process.pid}`;

afterAll(async () => {
  for (const name of created) await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.unsafe(`DROP ROLE IF EXISTS ${role}`);
  await admin.end();
});

/** A new, empty database; `owner` may create in it (a plain role may not, in Postgres 15's `public`). */
async function freshDatabase(tag: string): Promise<string> {
  const name = `leasegate_together_${process.pid}_${tag}`;
  await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.unsafe(`CREATE DATABASE ${name}`);
  created.push(name);
  return name;
}

function urlOf(database: string, user = testUrl.username || "postgres"): string {
  const u = new URL(testUrl);
  u.pathname = `/${database}`;
  u.username = user;
  return u.toString();
}

interface Run {
  child: ChildProcess;
  /** Settles with stdout's first line once the server listens, or with the exit once it ends. */
  outcome: Promise<{ listening: boolean; stderr: string; code: number | null }>;
}

function startLocal(databaseUrl: string): Run {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !/^(LEASE_|DB_|DATABASE_|DEBUG_TOKEN$|PORT$)/.test(name)),
  );
  const child = spawn(process.execPath, ["--conditions=source", "examples/pitches/src/main-node.ts"], {
    cwd: root,
    env: { ...inherited, NO_COLOR: "1", PORT: "0", DATABASE_URL: databaseUrl, LEASE_LIMIT: "2" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const outcome = new Promise<{ listening: boolean; stderr: string; code: number | null }>((resolve) => {
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes("leasegate local server")) resolve({ listening: true, stderr, code: null });
    });
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => resolve({ listening: false, stderr, code }));
  });
  return { child, outcome };
}

async function stopAll(runs: Run[]): Promise<void> {
  await Promise.all(
    runs.map(
      (r) =>
        new Promise<void>((resolve) => {
          if (r.child.exitCode !== null || r.child.signalCode !== null) return resolve();
          r.child.once("close", () => resolve());
          r.child.kill("SIGTERM");
        }),
    ),
  );
}

describe("processes that start together on a new database", () => {
  it("all come up: the example's migration and seed take turns, and the seed runs once", async () => {
    for (let round = 0; round < 3; round++) {
      const database = await freshDatabase(`r${round}`);
      const runs = [0, 1, 2].map(() => startLocal(urlOf(database)));
      try {
        const outcomes = await Promise.all(runs.map((r) => r.outcome));
        for (const o of outcomes) expect(o, JSON.stringify(o)).toMatchObject({ listening: true });
        const check = postgres(urlOf(database), { max: 1, onnotice: () => {} });
        try {
          const [row] = await check<{ n: number }[]>`SELECT count(*)::int AS n FROM pitches`;
          expect(row?.n).toBe(200);
        } finally {
          await check.end();
        }
      } finally {
        await stopAll(runs);
      }
    }
  }, 90_000);

  it("a start that fails after its preflight says what failed in one line, with its code", async () => {
    // A role that may connect but not create: the example's migration is refused (42501).
    await admin.unsafe(`DROP ROLE IF EXISTS ${role}`);
    await admin.unsafe(`CREATE ROLE ${role} LOGIN`);
    const database = await freshDatabase("denied");
    const run = startLocal(urlOf(database, role));
    try {
      const o = await run.outcome;
      const lines = o.stderr.split("\n").filter((l) => l.trim() !== "");
      expect(o.listening).toBe(false);
      expect(o.code).not.toBe(0);
      expect(lines, o.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^leasegate: the app could not start \(42501\): permission denied/);
    } finally {
      await stopAll([run]);
    }
  }, 30_000);
});
