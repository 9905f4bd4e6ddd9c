import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { type Server, type Socket, createServer } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PREFLIGHT_CONNECT_TIMEOUT_MS } from "../../local/preflight.ts";

// Every bad start, as a person starts it: the real entry points as OS processes, against a real
// refused port, a real unknown host, a missing database on the real Postgres, a real TCP server
// that accepts and never answers, and an unparsable URL. Each must end within the connect timeout
// with one line on stderr and a non-zero exit, and never print the password.
//
// The one stand-in: the Postgres of these machines uses trust auth, so it never asks for a
// password. A tiny server that speaks just enough of the wire protocol asks for one (cleartext)
// and refuses it with the ErrorResponse a real server sends (SQLSTATE 28P01).

const root = join(import.meta.dirname, "..", "..");
const testUrl = new URL(process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
const SECRET = `Preflight-Secret-${process.pid}`;
/** The test database, with a password trust auth ignores (so a leak of it would show). */
const goodUrl = (() => {
  const u = new URL(testUrl);
  u.username ||= "postgres";
  u.password = SECRET;
  return u.toString();
})();

// The Deno entry as a fresh clone starts it: `npm run start:deno` runs deno.json's `start` task
// with the deno that `npm install` brought (there is no deno on PATH).
const ENTRIES = [
  { name: "npm start", command: process.execPath, args: ["scripts/start.ts"] },
  {
    name: "npm run start:local",
    command: process.execPath,
    args: ["--conditions=source", "examples/pitches/src/main-node.ts"],
  },
  { name: "npm run start:deno", command: "npm", args: ["run", "--silent", "start:deno"] },
  { name: "npm run start:bun", command: "npm", args: ["run", "--silent", "start:bun"] },
];

const sockets = new Set<Socket>();
const servers: Server[] = [];
let silentPort = 0;
let authPort = 0;
const passwordsReceived: string[] = [];

async function serve(onConnection: (socket: Socket) => void): Promise<number> {
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    onConnection(socket);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as { port: number }).port;
}

/** One backend message: type byte, int32 length (itself included), body. */
function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** Asks for a cleartext password, records it, and refuses it as Postgres does. */
function refusePassword(socket: Socket): void {
  let buffer = Buffer.alloc(0);
  let started = false;
  socket.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!started) {
      if (buffer.length < 8 || buffer.length < buffer.readInt32BE(0)) return;
      const length = buffer.readInt32BE(0);
      if (buffer.readInt32BE(4) === 80877103) {
        socket.write("N"); // SSLRequest: no TLS here
      } else {
        started = true;
        const auth = Buffer.alloc(4);
        auth.writeInt32BE(3); // AuthenticationCleartextPassword
        socket.write(message("R", auth));
      }
      buffer = buffer.subarray(length);
      return;
    }
    if (buffer.length < 5 || buffer.length < 1 + buffer.readInt32BE(1)) return;
    passwordsReceived.push(buffer.subarray(5, buffer.readInt32BE(1)).toString("utf8").replace(/\0$/, ""));
    const fields = ["SFATAL", "VFATAL", "C28P01", 'Mpassword authentication failed for user "app"', "Rauth_failed"];
    socket.end(message("E", Buffer.concat([...fields.map((f) => Buffer.from(`${f}\0`)), Buffer.from([0])])));
  });
}

beforeAll(async () => {
  silentPort = await serve(() => {}); // accepts, never says a word
  authPort = await serve(refusePassword);
});

afterAll(async () => {
  // What each bad start printed and how long it took, for a person to read.
  const report = await Promise.all([...results].map(async ([name, r]) => ({ name, ...(await r) })));
  mkdirSync(join(root, "test-artifacts"), { recursive: true });
  writeFileSync(join(root, "test-artifacts", "preflight.json"), `${JSON.stringify(report, null, 2)}\n`);
  for (const s of sockets) s.destroy();
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
});

interface Started {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Starts an entry with `env` on top of a clean environment; kills it if it outlives `killAfterMs`. */
function start(entry: (typeof ENTRIES)[number], env: Record<string, string>, killAfterMs = 15_000): Promise<Started> {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !/^(LEASE_|DB_|DATABASE_|DEBUG_TOKEN$|PORT$)/.test(name)),
  );
  // A fresh clone's PATH: no deno and no node_modules/.bin (npm puts it back for its scripts).
  const path = (process.env.PATH ?? "")
    .split(":")
    .filter((dir) => !dir.includes("node_modules"))
    .join(":");
  const started = performance.now();
  const child = spawn(entry.command, entry.args, {
    cwd: root,
    env: { ...inherited, PATH: path, NO_COLOR: "1", PORT: "0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group: a start that wrongly goes on (wrangler, workerd) is killed whole.
    detached: true,
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const killer = setTimeout(() => {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      // Gone already.
    }
  }, killAfterMs);
  return new Promise((resolve) => {
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr, ms: Math.round(performance.now() - started) });
    });
  });
}

const db = (host: string, port: number | string, database = "app", user = "app") =>
  `postgres://${user}:${SECRET}@${host}:${port}/${database}`;
const missingDb = `leasegate_missing_${process.pid}`;

/** Each bad start: its environment, the variable and code its one line must name. */
const CASES: Array<{
  name: string;
  env: () => Record<string, string>;
  variable: string;
  code: RegExp;
  slow?: boolean;
}> = [
  {
    name: "a refused port",
    env: () => ({ DATABASE_URL: db("127.0.0.1", 1) }),
    variable: "DATABASE_URL",
    code: /ECONNREFUSED/,
  },
  {
    name: "an unknown host",
    env: () => ({ DATABASE_URL: db("no-such-host.invalid", 5432) }),
    variable: "DATABASE_URL",
    code: /ENOTFOUND|EAI_AGAIN/,
  },
  {
    name: "a missing database",
    env: () => ({
      DATABASE_URL: db(testUrl.hostname, testUrl.port || 5432, missingDb, testUrl.username || "postgres"),
    }),
    variable: "DATABASE_URL",
    code: /3D000/,
  },
  {
    name: "a wrong password",
    env: () => ({ DATABASE_URL: db("127.0.0.1", authPort) }),
    variable: "DATABASE_URL",
    code: /28P01/,
  },
  {
    name: "a server that accepts and never answers",
    env: () => ({ DATABASE_URL: db("127.0.0.1", silentPort) }),
    variable: "DATABASE_URL",
    code: /CONNECT_TIMEOUT/,
    slow: true,
  },
  {
    name: "an unparsable URL",
    env: () => ({ DATABASE_URL: `postgres://user:${SECRET}@host:badport/db` }),
    variable: "DATABASE_URL",
    code: /INVALID_CONFIG/,
  },
  {
    name: "LEASE_LIMIT=abc",
    env: () => ({ DATABASE_URL: goodUrl, LEASE_LIMIT: "abc" }),
    variable: "LEASE_LIMIT",
    code: /INVALID_CONFIG/,
  },
  {
    name: "LEASE_LIMIT=-1",
    env: () => ({ DATABASE_URL: goodUrl, LEASE_LIMIT: "-1" }),
    variable: "LEASE_LIMIT",
    code: /INVALID_CONFIG/,
  },
  {
    name: "LEASE_WAIT_MS=1e3",
    env: () => ({ DATABASE_URL: goodUrl, LEASE_WAIT_MS: "1e3" }),
    variable: "LEASE_WAIT_MS",
    code: /INVALID_CONFIG/,
  },
  {
    name: "DB_CONNECT_TIMEOUT_MS=soon",
    env: () => ({ DATABASE_URL: goodUrl, DB_CONNECT_TIMEOUT_MS: "soon" }),
    variable: "DB_CONNECT_TIMEOUT_MS",
    code: /INVALID_CONFIG/,
  },
];

const RUNS = ENTRIES.flatMap((entry) => CASES.map((c) => ({ entry, c })));
const results = new Map<string, Promise<Started>>();
const key = (entry: string, c: string) => `${entry} | ${c}`;

// The slow (hang) runs start first, then the rest six at a time, so two cores keep the timings
// honest; each case's promise is registered up front and filled in as its run ends.
beforeAll(() => {
  const ordered = [...RUNS.filter((r) => r.c.slow), ...RUNS.filter((r) => !r.c.slow)];
  const pending = new Map<string, (r: Started) => void>();
  for (const { entry, c } of RUNS)
    results.set(key(entry.name, c.name), new Promise((resolve) => pending.set(key(entry.name, c.name), resolve)));
  let next = 0;
  const runner = async () => {
    while (next < ordered.length) {
      const { entry, c } = ordered[next++]!;
      pending.get(key(entry.name, c.name))!(await start(entry, c.env()));
    }
  };
  for (let i = 0; i < 6; i++) void runner();
});

describe.each(ENTRIES.map((e) => e.name))("%s with a bad start", (entry) => {
  it.each(CASES)(
    "$name: one line on stderr naming the variable, non-zero exit, in time, no password",
    async (c) => {
      const r = await results.get(key(entry, c.name))!;
      const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
      const shown = JSON.stringify(r);
      expect(r.signal, shown).toBeNull(); // ended by itself, not by the test's kill
      expect(r.code, shown).not.toBe(0);
      expect(lines, shown).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^leasegate: ${c.variable}: `));
      expect(lines[0]).toMatch(c.code);
      expect(lines[0]).not.toMatch(/\n|^\s+at /);
      expect(r.stdout + r.stderr).not.toContain(SECRET);
      if (c.variable === "DATABASE_URL" && !/INVALID_CONFIG/.test(c.code.source)) expect(lines[0]).toContain(":***@");
      if (c.slow) {
        expect(r.ms).toBeGreaterThanOrEqual(PREFLIGHT_CONNECT_TIMEOUT_MS - 100);
        expect(r.ms).toBeLessThan(PREFLIGHT_CONNECT_TIMEOUT_MS + 3000);
      } else {
        expect(r.ms).toBeLessThan(PREFLIGHT_CONNECT_TIMEOUT_MS);
      }
    },
    30_000,
  );
});

describe("bad start hints", () => {
  it("npm start says how to fall back to the embedded database; the local servers, to the local cluster", async () => {
    const npmStart = (await results.get(key("npm start", "a refused port"))!).stderr;
    expect(npmStart).toContain("is Postgres running? unset DATABASE_URL to use the embedded database");
    for (const entry of ["npm run start:local", "npm run start:deno", "npm run start:bun"]) {
      expect((await results.get(key(entry, "a refused port"))!).stderr).toContain(
        "unset DATABASE_URL to use the local cluster",
      );
    }
  }, 30_000);

  it("the wrong-password server was really sent the password, and it shows nowhere", async () => {
    for (const entry of ENTRIES) await results.get(key(entry.name, "a wrong password"));
    // At least once per entry (postgres.js may try a closed startup connection once more).
    expect(passwordsReceived.length).toBeGreaterThanOrEqual(ENTRIES.length);
    expect(new Set(passwordsReceived)).toEqual(new Set([SECRET]));
  }, 30_000);
});
