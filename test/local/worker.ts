/**
 * One OS process of the multi-process test: a PostgresCoordinator driven over IPC by the test.
 * Every lease it holds pays for one real Postgres connection tagged with `APP_NAME`, so the test
 * can count held slots from `pg_stat_activity` as well as from the coordinator's ledger.
 */
import postgres, { type Sql } from "postgres";
import { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { Leases } from "../../src/client/leases.ts";
import { type LeaseGrant, configFromEnv, isLeaseError } from "../../src/core/index.ts";

export type Command =
  | { cmd: "hold"; tag: string; waitMs?: number; ttlMs?: number }
  | { cmd: "release"; tag: string }
  | { cmd: "load"; durationMs: number; concurrency: number }
  /** Holds a slot for `holdMs` inside `withLease` (its heartbeat renews) on a real connection. */
  | { cmd: "work"; tag: string; holdMs: number; waitMs?: number; ttlMs?: number; heartbeatMs?: number }
  | { cmd: "exit" };

export type Event =
  | { event: "ready"; pid: number }
  | { event: "granted"; tag: string; fence: number; waitedMs: number }
  | { event: "failed"; tag: string; code: string; waitedMs: number }
  | { event: "released"; tag: string; code?: string }
  | { event: "loaded"; grants: number; errors: string[] }
  | { event: "done"; tag: string; code?: string };

const url = process.env.DATABASE_URL!;
const appName = process.env.APP_NAME!;
const sql = postgres(url, { max: 2, onnotice: () => {} });
const coordinator = new PostgresCoordinator({ sql, pool: process.env.LEASE_POOL, config: configFromEnv(process.env) });
const leases = new Leases(coordinator, { holder: `pid ${process.pid}` });
const held = new Map<string, { lease: LeaseGrant; conn: Sql }>();

const send = (e: Event) => process.send!(e);

/** Opens the one connection a lease pays for, and makes sure it is really open. */
async function open(): Promise<Sql> {
  const conn = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: appName } });
  await conn`SELECT 1`;
  return conn;
}

async function hold(tag: string, waitMs: number | undefined, ttlMs: number | undefined): Promise<void> {
  const start = Date.now();
  try {
    const lease = await leases.acquire({ waitMs, ttlMs, holder: `${process.pid} ${tag}` });
    held.set(tag, { lease, conn: await open() });
    send({ event: "granted", tag, fence: lease.fence, waitedMs: Date.now() - start });
  } catch (error) {
    send({
      event: "failed",
      tag,
      code: isLeaseError(error) ? error.code : String(error),
      waitedMs: Date.now() - start,
    });
  }
}

async function releaseTag(tag: string): Promise<void> {
  const h = held.get(tag)!;
  held.delete(tag);
  // The connection is closed before the slot is given back: held connections never exceed leases.
  await h.conn.end({ timeout: 0 });
  try {
    await leases.release(h.lease);
    send({ event: "released", tag });
  } catch (error) {
    send({ event: "released", tag, code: isLeaseError(error) ? error.code : String(error) });
  }
}

async function load(durationMs: number, concurrency: number): Promise<void> {
  const until = Date.now() + durationMs;
  let grants = 0;
  const errors: string[] = [];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < until) {
        try {
          await leases.withLease(async ({ beforeRelease }) => {
            const conn = await open();
            beforeRelease(() => conn.end({ timeout: 0 }));
            grants++;
            await new Promise((r) => setTimeout(r, 2 + Math.random() * 10));
          });
        } catch (error) {
          errors.push(isLeaseError(error) ? error.code : String(error));
        }
      }
    }),
  );
  send({ event: "loaded", grants, errors });
}

async function work(msg: Extract<Command, { cmd: "work" }>): Promise<void> {
  const start = Date.now();
  try {
    await leases.withLease(
      async ({ lease, beforeRelease }) => {
        const conn = await open();
        beforeRelease(() => conn.end({ timeout: 0 }));
        send({ event: "granted", tag: msg.tag, fence: lease.fence, waitedMs: Date.now() - start });
        await new Promise((r) => setTimeout(r, msg.holdMs));
      },
      { holder: `${process.pid} ${msg.tag}`, waitMs: msg.waitMs, ttlMs: msg.ttlMs, heartbeatMs: msg.heartbeatMs },
    );
    send({ event: "done", tag: msg.tag });
  } catch (error) {
    send({
      event: "failed",
      tag: msg.tag,
      code: isLeaseError(error) ? error.code : String(error),
      waitedMs: Date.now() - start,
    });
  }
}

process.on("message", (msg: Command) => {
  if (msg.cmd === "work") void work(msg);
  else if (msg.cmd === "hold") void hold(msg.tag, msg.waitMs, msg.ttlMs);
  else if (msg.cmd === "release") void releaseTag(msg.tag);
  else if (msg.cmd === "load") void load(msg.durationMs, msg.concurrency);
  else if (msg.cmd === "exit") {
    void (async () => {
      for (const tag of [...held.keys()]) await releaseTag(tag);
      await coordinator.close();
      await sql.end();
      process.exit(0);
    })();
  }
});

await coordinator.ready();
send({ event: "ready", pid: process.pid });
