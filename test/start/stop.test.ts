import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

// `npm start` as a user stops it: a signal to npm (`timeout 60 npm start` sends SIGTERM to npm, which
// runs the script under `sh -c`) or to the script itself. Real processes: wrangler dev, workerd,
// esbuild. Every process under the start, read from /proc before the signal, must be gone after it.

const root = join(import.meta.dirname, "..", "..");
const database = process.env.LEASEGATE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** A port nothing listens on now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The parent of every process on the machine, from /proc. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so read after the last ")".
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      out.set(Number(entry), ppid);
    } catch {
      // Gone while listing.
    }
  }
  return out;
}

/** `pid` and every process under it, with their command lines. */
function tree(pid: number): Array<{ pid: number; command: string }> {
  const byParent = new Map<number, number[]>();
  for (const [child, parent] of parents()) byParent.set(parent, [...(byParent.get(parent) ?? []), child]);
  const found: number[] = [];
  const next = [pid];
  while (next.length > 0) {
    const p = next.pop()!;
    found.push(p);
    next.push(...(byParent.get(p) ?? []));
  }
  return found.map((p) => ({ pid: p, command: commandOf(p) }));
}

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim().slice(0, 120);
  } catch {
    return "";
  }
}

/** Whether `pid` still runs (a zombie, dead and waiting for its parent, does not). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Starts `command` as a user would, and resolves with its port once it serves (its output says `ready`). */
async function start(
  command: string,
  args: readonly string[],
  ready: string,
): Promise<{ child: ChildProcess; port: number }> {
  const port = await freePort();
  const child = spawn(command, args, {
    cwd: root,
    env: { ...process.env, NO_COLOR: "1", PORT: String(port), DATABASE_URL: database, LEASE_LIMIT: "2" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready after 90 s:\n${output}`)), 90_000);
    const read = (d: Buffer) => {
      output += d.toString();
      if (output.includes(ready)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on("data", read);
    child.stderr!.on("data", read);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`exited (${code}) before it was ready:\n${output}`));
    });
  });
  return { child, port };
}

const WRANGLER = "Ready on";
const CASES = [
  { via: "npm start", command: "npm", args: ["start"], signal: "SIGTERM" },
  { via: "npm start", command: "npm", args: ["start"], signal: "SIGINT" },
  // npm killed outright: the start, orphaned, stops as on SIGTERM.
  { via: "npm start", command: "npm", args: ["start"], signal: "SIGKILL" },
  {
    via: "node scripts/start.ts",
    command: process.execPath,
    args: ["scripts/start.ts"],
    signal: "SIGTERM",
  },
  {
    via: "node scripts/start.ts",
    command: process.execPath,
    args: ["scripts/start.ts"],
    signal: "SIGINT",
  },
] as const;

describe("npm start stops its children", () => {
  it.each(CASES)(
    "$signal to `$via`: wrangler dev, workerd and esbuild are gone within 30 s",
    async ({ command, args, signal }) => {
      const { child } = await start(command, args, WRANGLER);
      const before = tree(child.pid!);
      try {
        expect(
          before.some((p) => p.command.includes("workerd")),
          JSON.stringify(before),
        ).toBe(true);
        expect(
          before.some((p) => p.command.includes("wrangler")),
          JSON.stringify(before),
        ).toBe(true);
        child.kill(signal);
        const deadline = Date.now() + 30_000;
        while (Date.now() < deadline && before.some((p) => alive(p.pid)))
          await new Promise((resolve) => setTimeout(resolve, 200));
        expect(before.filter((p) => alive(p.pid))).toEqual([]);
      } finally {
        // A failed run leaves nothing behind either.
        for (const p of before.reverse()) if (alive(p.pid)) process.kill(p.pid, "SIGKILL");
      }
    },
    150_000,
  );
});

describe("npm run start:bun", () => {
  it("serves the example app on Bun (its leased connections on Bun.SQL), and SIGTERM ends it and its bun", async () => {
    const { child, port } = await start("npm", ["run", "start:bun"], "leasegate local server (Bun");
    const before = tree(child.pid!);
    try {
      const health = await fetch(`http://127.0.0.1:${port}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ status: "ok", database: "up", coordinator: "up" });
      const trending = await fetch(`http://127.0.0.1:${port}/api/pitches/trending?limit=2`);
      expect(((await trending.json()) as { pitches: unknown[] }).pitches).toHaveLength(2);
      child.kill("SIGTERM");
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && before.some((p) => alive(p.pid)))
        await new Promise((resolve) => setTimeout(resolve, 200));
      expect(before.filter((p) => alive(p.pid))).toEqual([]);
    } finally {
      for (const p of before.reverse()) if (alive(p.pid)) process.kill(p.pid, "SIGKILL");
    }
  }, 150_000);
});
