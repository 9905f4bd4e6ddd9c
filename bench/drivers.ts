/**
 * `npm run bench:drivers`: postgres.js against node-postgres through the same lease path, side by
 * side in one run. Both drive the database layer exactly as production without a pooler does:
 * `Database.query` under one lease of one `PostgresCoordinator` pool (LEASE_LIMIT slots), one
 * connection opened per lease and closed before the slot goes back, as a role with
 * `CONNECTION LIMIT 20`. BENCH_CONCURRENCY callers loop on the example app's trending query for
 * BENCH_SECONDS per round; the drivers take turns for BENCH_ROUNDS rounds each, so a change of
 * machine load hits both alike. Loopback only; bounded by rounds × seconds.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:drivers
 *
 * Env: BENCH_SECONDS (5), BENCH_ROUNDS (3), BENCH_CONCURRENCY (200), LEASE_LIMIT (18),
 * BENCH_ROLE (leasegate_app), BENCH_OUT (docs/bench-drivers.md; `-` prints only).
 */
import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import postgres from "postgres";
import { PostgresCoordinator } from "../local/postgres-coordinator.ts";
import { Leases } from "../src/client/leases.ts";
import { isLeaseError } from "../src/core/index.ts";
import { databaseConfig } from "../src/db/config.ts";
import { type Driver, openDriver } from "../src/db/connect.ts";
import { Database } from "../src/db/database.ts";
import { migrate, seed } from "../examples/pitches/src/schema.ts";

const adminUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const seconds = num("BENCH_SECONDS", 5, 1, 120);
const rounds = num("BENCH_ROUNDS", 3, 1, 20);
const concurrency = num("BENCH_CONCURRENCY", 200, 1, 5000);
const limit = num("LEASE_LIMIT", 18, 1, 19);
const role = process.env.BENCH_ROLE ?? "leasegate_app";
const out = process.env.BENCH_OUT ?? "docs/bench-drivers.md";
if (!/^[a-z_][a-z0-9_]{0,62}$/.test(role)) throw new Error(`BENCH_ROLE must be a plain identifier, got ${role}`);
const CLIENTS = ["postgres", "pg"] as const;
type Client = (typeof CLIENTS)[number];
const LABEL: Record<Client, string> = { postgres: "postgres.js 3.4.9", pg: "node-postgres (pg) 8.23.1" };
const QUERY =
  "SELECT id, title, genre, author, view_count FROM pitches WHERE is_public ORDER BY view_count DESC, id LIMIT 10";

function num(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === "" ? fallback : Number(raw);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`${name} must be an integer from ${min} to ${max}, got ${raw}`);
  return value;
}

interface Round {
  client: Client;
  ok: number;
  /** Calls completed inside the round's window: the throughput figure (the drain after it is not counted). */
  inWindow: number;
  /** Per connection, ms from the start of connect() until close() resolved: the driver's own share. */
  connectionMs: number[];
  errors: Record<string, number>;
  latenciesMs: number[];
  peak: number;
}

const admin = postgres(adminUrl, { max: 2, onnotice: () => {} });

async function prepare(): Promise<string> {
  await admin.unsafe(`DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${role}') THEN CREATE ROLE ${role} LOGIN PASSWORD 'leasegate' CONNECTION LIMIT 20; END IF;
  END$$`);
  await admin.unsafe(`ALTER ROLE ${role} CONNECTION LIMIT 20`);
  await migrate(admin);
  await seed(admin);
  await admin.unsafe(`GRANT USAGE ON SCHEMA public TO ${role}; GRANT SELECT ON pitches TO ${role}`);
  const u = new URL(adminUrl);
  u.username = role;
  u.password = "leasegate";
  return u.toString();
}

const roleConnections = async () =>
  Number((await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ${role}`)[0]!.n);

async function idle(): Promise<void> {
  for (let i = 0; i < 100 && (await roleConnections()) > 0; i++) await new Promise((r) => setTimeout(r, 100));
}

async function round(client: Client, url: string, leases: Leases, ms: number): Promise<Round> {
  const config = databaseConfig({
    DATABASE_URL: url,
    DATABASE_CLIENT: client,
    APPLICATION_NAME: `bench-${client}`,
    DB_DEADLINE_MS: "15000",
  });
  // A breaker and log of its own per round: a failure in one round must not shape the next.
  const result: Round = { client, ok: 0, inWindow: 0, connectionMs: [], errors: {}, latenciesMs: [], peak: 0 };
  const inner = openDriver(config);
  const driver: Driver = {
    name: inner.name,
    async connect(limits) {
      const t0 = performance.now();
      const conn = await inner.connect(limits);
      return {
        query: (text, params) => conn.query(text, params),
        cancel: () => conn.cancel(),
        async close() {
          await conn.close();
          result.connectionMs.push(performance.now() - t0);
        },
      };
    },
  };
  const db = new Database({ name: `bench-${client}`, driver, leases, config, log: () => {} });
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      result.peak = Math.max(result.peak, await roleConnections());
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const endAt = performance.now() + ms;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < endAt) {
        const t0 = performance.now();
        try {
          await db.query(QUERY, [], { holder: `bench ${client}`, waitMs: 10_000 });
          const t1 = performance.now();
          result.ok++;
          if (t1 <= endAt) result.inWindow++;
          result.latenciesMs.push(t1 - t0);
        } catch (error) {
          const code = isLeaseError(error) ? error.code : "UNKNOWN";
          result.errors[code] = (result.errors[code] ?? 0) + 1;
        }
      }
    }),
  );
  sampling = false;
  await sampler;
  return result;
}

function pct(sorted: number[], q: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const url = await prepare();
const pool = `bench-drivers-${process.pid}-${Date.now()}`;
const coordinatorSql = postgres(adminUrl, { max: 4, onnotice: () => {} });
const coordinator = new PostgresCoordinator({
  sql: coordinatorSql,
  pool,
  config: { limit, maxQueue: 1000, waitMs: 10_000, leaseTtlMs: 30_000 },
});
await coordinator.ready();
const leases = new Leases(coordinator);
const results: Round[] = [];
try {
  // Warm-up: both drivers loaded and JIT-compiled before anything is measured.
  for (const client of CLIENTS) await round(client, url, leases, 1000);
  for (let r = 0; r < rounds; r++) {
    for (const client of r % 2 === 0 ? CLIENTS : [...CLIENTS].reverse()) {
      await idle();
      const res = await round(client, url, leases, seconds * 1000);
      results.push(res);
      const errors = Object.values(res.errors).reduce((a, b) => a + b, 0);
      console.error(
        `round ${r + 1} ${client}: ${(res.inWindow / seconds).toFixed(0)} req/s, ${errors} errors, peak ${res.peak}`,
      );
    }
  }
} finally {
  await coordinator.close();
  for (const t of ["leasegate_leases", "leasegate_waiters", "leasegate_pools"])
    await coordinatorSql`DELETE FROM ${coordinatorSql(t)} WHERE pool = ${pool}`;
  await coordinatorSql.end();
}
await admin.end();

const lines = [
  "| driver | requests | req/s (mean of rounds) | req/s per round | p50 ms | p99 ms | connection open→closed p50 / p99 ms | errors | peak connections (limit 20) |",
  "|---|---:|---:|---|---:|---:|---:|---:|---:|",
];
for (const client of CLIENTS) {
  const mine = results.filter((r) => r.client === client);
  const ok = mine.reduce((s, r) => s + r.ok, 0);
  const perRound = mine.map((r) => r.inWindow / seconds);
  const mean = perRound.reduce((a, b) => a + b, 0) / perRound.length;
  const lat = mine.flatMap((r) => r.latenciesMs).sort((a, b) => a - b);
  const held = mine.flatMap((r) => r.connectionMs).sort((a, b) => a - b);
  const errors: Record<string, number> = {};
  for (const r of mine) for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + n;
  const errorText =
    Object.keys(errors).length === 0
      ? "0"
      : Object.entries(errors)
          .map(([c, n]) => `${n} ${c}`)
          .join(", ");
  lines.push(
    `| ${LABEL[client]} | ${ok} | ${mean.toFixed(0)} | ${perRound.map((v) => v.toFixed(0)).join(" / ")} | ${pct(lat, 0.5).toFixed(1)} | ${pct(lat, 0.99).toFixed(1)} | ${pct(held, 0.5).toFixed(1)} / ${pct(held, 0.99).toFixed(1)} | ${errorText} | ${Math.max(...mine.map((r) => r.peak))} |`,
  );
}
const table = lines.join("\n");
console.log(table);

if (out !== "-") {
  const date = new Date().toISOString().slice(0, 10);
  const doc = `# Drivers: postgres.js and node-postgres under leases

Measured ${date} on ${cpus().length} cores (${cpus()[0]?.model.trim() ?? "?"}), Node ${process.version}, the local Postgres on loopback.

\`\`\`
BENCH_SECONDS=${seconds} BENCH_ROUNDS=${rounds} BENCH_CONCURRENCY=${concurrency} LEASE_LIMIT=${limit} npm run bench:drivers
\`\`\`

Both drivers run the same path: \`Database.query\` (retries, breaker) under one lease of one
\`PostgresCoordinator\` pool of ${limit} slots, one connection opened per lease and closed before
the slot is given back — production without a pooler — as the role \`${role}\` with
\`CONNECTION LIMIT 20\`. ${concurrency} callers loop on the example app's trending query
(10 rows) for ${seconds} s per round; the drivers alternate for ${rounds} rounds each (after a
1 s warm-up of each), callers, coordinator and drivers in one Node process. Latency is per call,
queueing for a slot included; "connection open→closed" is each connection's life inside its
lease, from the start of connecting until \`close()\` resolved (the driver's own share).

${table}

Latency is mostly the wait for a slot: ${concurrency} callers share ${limit}. Each call opens a
fresh connection (TCP connect, startup, authentication), runs one query and sends Terminate; the
connection column is that driver work alone, and it is what sets the pace of the pool. Behind a
pooler (Hyperdrive in production, PgBouncer locally) connecting costs less; see BENCHMARKS.md.
`;
  writeFileSync(out, doc);
  console.error(`written to ${out}`);
}
