import { type ChildProcess, spawn } from "node:child_process";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { forgetPools } from "./helpers.ts";

// The real entry points, as a developer starts them: `npm run start:local` (Node) and
// `npm run start:deno` (deno.json's `start` task), each its own OS process on its own port, one shared pool.
const url = process.env.LEASEGATE_TEST_DATABASE_URL!;
const POOL = `server-${process.pid}-${Date.now()}`;
const children: ChildProcess[] = [];

async function boot(command: string, args: string[]): Promise<string> {
  const child = spawn(command, args, {
    // PORT=0: a free port (parallel checkouts on one machine); the server prints the one it got.
    env: {
      ...process.env,
      DATABASE_URL: url,
      PORT: "0",
      LEASE_POOL: POOL,
      LEASE_LIMIT: "4",
      DEBUG_TOKEN: "srv-token",
      NO_COLOR: "1",
    },
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group: npm and deno task run the server as a grandchild; stop them all.
    detached: true,
  });
  children.push(child);
  let output = "";
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command} did not start in time: ${output}`)), 20_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const listening = /http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
      if (listening) {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${listening[1]}`);
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`${command} exited with ${code}: ${output}`)));
  });
}

afterAll(async () => {
  for (const c of children) if (c.pid !== undefined) process.kill(-c.pid, "SIGTERM");
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  await forgetPools(sql, POOL);
  await sql.end();
});

describe("local server entry points", () => {
  it("serve the same HTTP contract from Node and Deno, sharing one pool", async () => {
    const [node, deno] = await Promise.all([
      boot("npm", ["run", "--silent", "start:local"]),
      boot("npm", ["run", "--silent", "start:deno"]),
    ]);
    for (const base of [node, deno]) {
      const health = await fetch(`${base}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({
        status: "ok",
        database: "up",
        coordinator: "up",
        breaker: { state: "closed" },
      });
      const trending = await fetch(`${base}/api/pitches/trending?limit=2`);
      expect(trending.status).toBe(200);
      expect(((await trending.json()) as { pitches: unknown[] }).pitches).toHaveLength(2);
      const bad = await fetch(`${base}/api/pitches`, { method: "POST", body: "{not json" });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("INVALID_ARGUMENT");
      expect((await fetch(`${base}/__coordinator/stats`)).status).toBe(401);
      // The bearer scheme in any case (RFC 7235); a 405 names what is allowed (RFC 9110).
      expect(
        (await fetch(`${base}/__coordinator/stats`, { headers: { authorization: "bearer srv-token" } })).status,
      ).toBe(200);
      const wrongMethod = await fetch(`${base}/api/pitches/trending`, { method: "POST", body: "{}" });
      expect(wrongMethod.status).toBe(405);
      expect(wrongMethod.headers.get("allow")).toBe("GET");
      expect(((await wrongMethod.json()) as { error: { code: string } }).error.code).toBe("METHOD_NOT_ALLOWED");
    }
    // Both processes count in the same pool: 2 leases each (health + trending).
    const stats = await fetch(`${deno}/__coordinator/stats`, { headers: { authorization: "Bearer srv-token" } });
    const body = (await stats.json()) as {
      pool: string;
      limit: number;
      counters: { granted: number; released: number };
    };
    expect(body.pool).toBe(POOL);
    expect(body.limit).toBe(4);
    expect(body.counters).toMatchObject({ granted: 4, released: 4 });
  }, 40_000);
});
