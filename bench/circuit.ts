/**
 * `node bench/circuit.ts`: what a hung database costs each request, with and without the circuit
 * breaker. A local TCP server accepts and never answers; each request gets DB_CONNECT_TIMEOUT_MS
 * 1000 per attempt and a DB_DEADLINE_MS of 1500 (so one retry at most). No coordinator: this
 * measures the database policies alone.
 */
import { createServer } from "node:net";
import { databaseConfig } from "../src/db/config.ts";
import { openDriver } from "../src/db/connect.ts";
import { Database } from "../src/db/database.ts";

const PORT = Number(process.env.PORT ?? 8810);
const REQUESTS = 12;
const server = createServer((socket) => socket.on("error", () => {}));
await new Promise<void>((resolve) => server.listen(PORT, "127.0.0.1", resolve));

async function run(label: string, failureThreshold: number): Promise<void> {
  const config = {
    ...databaseConfig({
      DATABASE_URL: `postgres://127.0.0.1:${PORT}/none`,
      DB_CONNECT_TIMEOUT_MS: "1000",
      DB_DEADLINE_MS: "1500",
    }),
    breaker: { failureThreshold, openMs: 60_000 },
  };
  const db = new Database({ name: label, driver: openDriver(config), leases: undefined, config, log: () => {} });
  const times: number[] = [];
  const started = performance.now();
  for (let i = 0; i < REQUESTS; i++) {
    const t = performance.now();
    await db.query("SELECT 1").catch(() => {});
    times.push(performance.now() - t);
  }
  const total = performance.now() - started;
  times.sort((a, b) => a - b);
  const p50 = times[Math.floor(times.length / 2)]!;
  console.log(
    `${label.padEnd(24)} ${REQUESTS} requests in ${(total / 1000).toFixed(2)} s; p50 ${p50.toFixed(2)} ms; max ${times.at(-1)!.toFixed(0)} ms`,
  );
}

await run("no breaker", 1_000_000);
await run("breaker (threshold 2)", 2);
server.close();
process.exit(0);
