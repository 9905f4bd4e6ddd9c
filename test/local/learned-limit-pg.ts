/**
 * A private Postgres cluster for the learned-limit tests: a temp directory, a free port, a small
 * `max_connections`, its own log (where refused connections are counted), stopped and removed after.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = "/usr/lib/postgresql";

/** A Postgres tool; as root it runs as the postgres user, which Postgres insists on. */
function pgTool(args: string[]): void {
  const version = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a))[0];
  if (!version)
    throw new Error("These tests need a Postgres server installed (initdb not found under /usr/lib/postgresql)");
  const bin = join(root, version, "bin");
  const asRoot = process.getuid?.() === 0;
  const [cmd, argv] = asRoot
    ? ["runuser", ["-u", "postgres", "--", join(bin, args[0]!), ...args.slice(1)]]
    : [join(bin, args[0]!), args.slice(1)];
  execFileSync(cmd as string, argv as string[], { stdio: ["ignore", "ignore", "inherit"], cwd: tmpdir() });
}

/** `LEASEGATE_TEST_PORTS=from-to`: the ports this run's servers may take (a shared machine's share). */
const range = /^(\d+)-(\d+)$/.exec(process.env.LEASEGATE_TEST_PORTS ?? "");
let next = range ? Number(range[1]) : 0;

/**
 * A port free now: the next free one of `LEASEGATE_TEST_PORTS` when set, else one the system picks.
 *
 * @example
 * const port = await freePort();
 */
export async function freePort(): Promise<number> {
  for (;;) {
    if (range && next > Number(range[2])) throw new Error(`no free port left in LEASEGATE_TEST_PORTS ${range[0]}`);
    const server = createServer();
    const want = range ? next++ : 0;
    const ok = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(want, "127.0.0.1", () => resolve(true));
    });
    if (!ok) continue;
    const { port } = server.address() as { port: number };
    await new Promise((resolve) => server.close(resolve));
    return port;
  }
}

export interface PrivateCluster {
  port: number;
  /** `postgres://<user>@127.0.0.1:<port>/postgres` */
  url(user: string): string;
  start(): void;
  /** Immediate mode: the server dies like a crash. */
  stop(): void;
  /** Connections the server refused as too many (SQLSTATE 53300), from its log. */
  refused(): number;
  remove(): void;
}

/**
 * Creates and starts a cluster with `maxConnections` and `superuserReserved`, trust auth.
 *
 * @example
 * const pg = await privateCluster(16, 3);
 */
export async function privateCluster(maxConnections: number, superuserReserved: number): Promise<PrivateCluster> {
  const dir = mkdtempSync(join(tmpdir(), "leasegate-learn-pg-"));
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"]).toString().trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"]).toString().trim());
    chownSync(dir, uid, gid);
  }
  const port = await freePort();
  const log = join(dir, "log");
  pgTool(["initdb", "-D", dir, "-U", "postgres", "--auth=trust", "--no-sync"]);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=${maxConnections} -c superuser_reserved_connections=${superuserReserved}`;
  const cluster: PrivateCluster = {
    port,
    url: (user) => `postgres://${user}@127.0.0.1:${port}/postgres`,
    start: () => pgTool(["pg_ctl", "-D", dir, "-l", log, "-w", "-o", options, "start"]),
    stop: () => pgTool(["pg_ctl", "-D", dir, "-w", "-m", "immediate", "stop"]),
    refused: () =>
      existsSync(log)
        ? (readFileSync(log, "utf8").match(/FATAL: {2}(too many connections|remaining connection slots are reserved)/g)
            ?.length ?? 0)
        : 0,
    remove: () => {
      try {
        cluster.stop();
      } catch {
        // Already stopped.
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  cluster.start();
  return cluster;
}
