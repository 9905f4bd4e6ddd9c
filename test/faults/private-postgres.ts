/**
 * Global setup of the fault suite (runs in Node, not workerd): a PRIVATE Postgres cluster in a temp
 * directory on its own port, so tests may stop and start it without touching the shared cluster on
 * 5432, plus a tiny control server the tests in workerd call to stop/start it.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const FAULT_PG_PORT = Number(process.env.LEASEGATE_FAULT_PG_PORT ?? 5490);
export const FAULT_CONTROL_PORT = Number(process.env.LEASEGATE_FAULT_CONTROL_PORT ?? 8840);

function binDir(): string {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, "bin", "initdb"))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest)
    throw new Error("The fault suite needs a Postgres server installed (initdb not found under /usr/lib/postgresql)");
  return join(root, newest, "bin");
}

/** Runs a Postgres tool; as root it runs as the postgres user, which Postgres insists on. */
function pgTool(bin: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const [cmd, argv] = asRoot
    ? ["runuser", ["-u", "postgres", "--", join(bin, args[0]!), ...args.slice(1)]]
    : [join(bin, args[0]!), args.slice(1)];
  execFileSync(cmd as string, argv as string[], { stdio: ["ignore", "ignore", "inherit"], cwd: tmpdir() });
}

function migrateAndSeed(): void {
  // Migrate in a plain Node child: under vitest's module runner `postgres` resolves to its workerd build.
  const script = [
    `import postgres from "postgres";`,
    `import { migrate, seed } from "./examples/pitches/src/schema.ts";`,
    `const sql = postgres("postgres://postgres@127.0.0.1:${FAULT_PG_PORT}/postgres", { max: 1, onnotice: () => {} });`,
    `try { await migrate(sql); await seed(sql); } finally { await sql.end(); }`,
  ].join("\n");
  execFileSync(process.execPath, ["--input-type=module", "-e", script], { stdio: "inherit" });
}

export default async function setup(): Promise<() => Promise<void>> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), "leasegate-faults-pg-"));
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"]).toString().trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"]).toString().trim());
    chownSync(dir, uid, gid);
  }
  pgTool(bin, ["initdb", "-D", dir, "-U", "postgres", "--auth=trust", "--no-sync"]);
  const start = () =>
    pgTool(bin, [
      "pg_ctl",
      "-D",
      dir,
      "-l",
      join(dir, "log"),
      "-w",
      "-o",
      `-p ${FAULT_PG_PORT} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      "start",
    ]);
  // Immediate mode: the server dies like a crash, dropping every connection mid-query.
  const stop = () => pgTool(bin, ["pg_ctl", "-D", dir, "-w", "-m", "immediate", "stop"]);
  start();
  try {
    migrateAndSeed();
  } catch (error) {
    stop();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let stops = 0;
  const server: Server = createServer((req, res) => {
    try {
      if (req.method === "POST" && req.url === "/stop") {
        stop();
        stops++;
      } else if (req.method === "POST" && req.url === "/start") start();
      else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ok: true, stops }));
    } catch (error) {
      res.writeHead(500).end(String(error));
    }
  });
  await new Promise<void>((resolve) => server.listen(FAULT_CONTROL_PORT, "127.0.0.1", resolve));
  return async () => {
    await new Promise((resolve) => server.close(resolve));
    try {
      stop();
    } catch {
      // Already stopped by a test that failed midway.
    }
    rmSync(dir, { recursive: true, force: true });
  };
}
