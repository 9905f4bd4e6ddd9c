/**
 * Real things for the database-layer tests: a private Postgres cluster that can be stopped and
 * restarted, a TCP server that accepts and never answers, a WebSocket-to-TCP bridge for the Neon
 * driver, and an in-process coordinator.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { type Server, type Socket, connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocketServer } from "ws";
import type { Coordinator } from "../../src/client/leases.ts";
import {
  type AcquireOptions,
  type AcquireResult,
  type Lease,
  acquire,
  createPool,
  nextWakeAt,
  release,
  renew,
  stats,
  tick,
} from "../../src/core/index.ts";
import { grantOf } from "../../src/engine/answers.ts";

/** The shared test database (npm test creates and migrates it). */
export const TEST_URL = process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/leasegate_test";

/**
 * A coordinator in this process over the same pure core the Durable Object runs. A stand-in: the
 * Durable Object cannot run under plain Node; the workerd suite exercises the real one.
 */
export function memoryCoordinator(
  config = { limit: 2, maxQueue: 10, waitMs: 2000, leaseTtlMs: 30_000 },
): Coordinator & { down: boolean } {
  const pool = createPool(config);
  // Parked callers, with when their call arrived: a grant from the queue is valid from then (see `grantOf`).
  const waiting = new Map<string, { resolve: (result: AcquireResult) => void; at: number }>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const settle = (fx: { granted: Lease[]; timedOut: Array<{ leaseId: string }> }) => {
    for (const l of fx.granted) {
      const w = waiting.get(l.id);
      w?.resolve({ ok: true, lease: grantOf(l, w.at) });
    }
    for (const w of fx.timedOut)
      waiting.get(w.leaseId)?.resolve({ ok: false, code: "ACQUIRE_TIMEOUT", message: "timed out", retryAfterMs: 100 });
    for (const id of [...fx.granted.map((l) => l.id), ...fx.timedOut.map((w) => w.leaseId)]) waiting.delete(id);
    clearTimeout(timer);
    const wake = nextWakeAt(pool);
    if (wake !== null) timer = setTimeout(() => settle(tick(pool, Date.now())), Math.max(0, wake - Date.now()));
  };
  const self = {
    down: false,
    check() {
      // What a Durable Object stub does when the object cannot be reached: the call throws.
      if (self.down) throw Object.assign(new Error("Durable Object is unreachable"), { retryable: true });
    },
    async acquire(options: AcquireOptions = {}): Promise<AcquireResult> {
      self.check();
      const leaseId = crypto.randomUUID();
      const at = Date.now();
      const { outcome, effects } = acquire(
        pool,
        {
          leaseId,
          holder: options.holder ?? "",
          waitMs: options.waitMs,
          ttlMs: options.ttlMs,
          claimMs: options.claimMs,
        },
        at,
      );
      if (outcome.status === "granted") {
        settle(effects);
        return { ok: true, lease: grantOf(outcome.lease) };
      }
      if (outcome.status === "rejected")
        return { ok: false, code: outcome.code, message: outcome.message, retryAfterMs: outcome.retryAfterMs };
      const result = new Promise<AcquireResult>((resolve) => waiting.set(leaseId, { resolve, at }));
      settle(effects);
      return result;
    },
    async release(ref: { leaseId: string; fence: number }) {
      self.check();
      const { outcome, effects } = release(pool, ref, Date.now());
      settle(effects);
      return outcome.status === "ok"
        ? { ok: true as const, released: true as const }
        : { ok: false as const, code: outcome.code, message: outcome.message };
    },
    async renew(ref: { leaseId: string; fence: number }, ttlMs?: number) {
      self.check();
      const now = Date.now();
      const { outcome, effects } = renew(pool, ref, now, ttlMs);
      settle(effects);
      return outcome.status === "ok"
        ? { ok: true as const, lease: grantOf(outcome.lease, now) }
        : { ok: false as const, code: outcome.code, message: outcome.message };
    },
    async stats() {
      self.check();
      return stats(pool, Date.now());
    },
  };
  return self;
}

const PG_BIN = existsSync("/usr/lib/postgresql")
  ? join("/usr/lib/postgresql", readdirSync("/usr/lib/postgresql").sort().at(-1)!, "bin")
  : "";

function asPostgres(command: string, args: string[]): string {
  const bin = join(PG_BIN, command);
  // Postgres refuses to run as root: as root, run it as the `postgres` user.
  const run =
    process.getuid?.() === 0 ? (["runuser", ["-u", "postgres", "--", bin, ...args]] as const) : ([bin, args] as const);
  return execFileSync(run[0], run[1], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/**
 * A private Postgres cluster in a temporary directory on `port`, so tests may stop and restart it
 * without touching the shared cluster on 5432.
 */
export function privateCluster(port: number) {
  const dir = mkdtempSync(join(tmpdir(), "leasegate-pg-"));
  if (process.getuid?.() === 0)
    chownSync(
      dir,
      Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim()),
      Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim()),
    );
  const data = join(dir, "data");
  asPostgres("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
  const pgctl = (...args: string[]) => asPostgres("pg_ctl", ["-D", data, "-w", "-t", "20", ...args]);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=20`;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start: () => void pgctl("-o", options, "-l", join(dir, "log"), "start"),
    stop: () => void pgctl("-m", "fast", "stop"),
    destroy() {
      try {
        pgctl("-m", "immediate", "stop");
      } catch {
        // Already stopped.
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A TCP server that accepts connections and never answers a byte: the shape of a hung database. */
export async function silentServer(
  port: number,
): Promise<{ port: number; accepted: () => number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server: Server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    port,
    accepted: () => accepted,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A WebSocket-to-TCP bridge like Neon's proxy: each WebSocket at `/v2?address=host:port` becomes a
 * TCP connection to that address, bytes passed through both ways.
 */
export async function wsBridge(
  port: number,
): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  const wss = new WebSocketServer({ port, host: "127.0.0.1" });
  let connections = 0;
  wss.on("connection", (ws, request) => {
    connections++;
    const address = new URL(request.url ?? "/", "http://bridge").searchParams.get("address") ?? "";
    const [host, targetPort] = address.split(":");
    const tcp = connect(Number(targetPort), host!);
    ws.binaryType = "nodebuffer";
    ws.on("message", (data) => tcp.write(data as Buffer));
    tcp.on("data", (data) => ws.send(data));
    tcp.on("error", () => ws.close());
    tcp.on("close", () => ws.close());
    ws.on("close", () => tcp.destroy());
    ws.on("error", () => tcp.destroy());
  });
  await new Promise<void>((resolve) => wss.on("listening", () => resolve()));
  return {
    port,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
}

/** JSON lines written through a `log` option, parsed. */
export function captureLog(): { write: (line: string) => void; lines: Array<Record<string, unknown>>; raw: string[] } {
  const raw: string[] = [];
  const lines: Array<Record<string, unknown>> = [];
  return {
    raw,
    lines,
    write(line) {
      raw.push(line);
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  };
}
