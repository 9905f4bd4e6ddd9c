import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ADMIN_URL,
  type Outcome,
  type Sampled,
  type Scene,
  cuttableProxy,
  holderApp,
  isTooMany,
  nextCaller,
  scene,
  sceneFigures,
  untilGone,
  untilRunning,
  waitFor,
  watch,
} from "./harness.ts";

// The holder's coordinator is cut off from the database past the lease's TTL while the holder runs
// a long statement (LEASE_LIMIT=1, a role limited to 1 login). The holder's coordinator talks to
// Postgres through a TCP proxy that the test cuts (bytes stop both ways: renewals hang, as across a
// partition); its leased connection goes straight to Postgres and keeps working. Another process's
// coordinator (straight to Postgres) has a caller queued: it reaps the lease at its expiry and
// grants that caller. The holder must have stopped by then — no successful renewal by the lease's
// expiry on its own clock — with its statement cancelled and its connection closed.
const TTL_MS = 900;
const MARKER = "pg_sleep(6) /* cut off */";

let s: Scene;
let seen: Sampled;
let proxy: Awaited<ReturnType<typeof cuttableProxy>>;
let holder: Outcome<unknown>;
let next: Outcome<unknown>;
let cutAt = 0;
let expiresAt = 0;
let nextGrantedAt = 0;

beforeAll(async () => {
  s = await scene(1);
  proxy = await cuttableProxy(Number(new URL(ADMIN_URL).port || 5432));
  const cutOff = await s.open({ LEASE_TTL_MS: String(TTL_MS), DATABASE_URL: proxy.via(ADMIN_URL) });
  const other = await s.open({ LEASE_TTL_MS: String(TTL_MS) });
  const call = watch(cutOff.sql((sql) => sql.unsafe(`SELECT ${MARKER}`), { holder: "cut-off" }));
  await untilRunning(s.sampler, MARKER);
  const queued = nextCaller(other, { waitMs: 5000 }, (at) => {
    nextGrantedAt = at;
  });
  await waitFor(async () => (await other.operator!.stats()).waiting === 1, 1000);
  proxy.block();
  cutAt = Date.now();
  // A renewal sent just before the cut may still commit: read the expiry once it cannot move.
  await new Promise((r) => setTimeout(r, 50));
  const lease = (await other.operator!.stats()).leases.find((l) => l.holder === "cut-off");
  if (!lease) throw new Error("the holder's lease was gone before its expiry");
  expiresAt = Date.now() + lease.expiresInMs;
  // Bounded: the old code runs the statement its 6 s, then hangs on the release it cannot send.
  holder = await call.within(7000);
  next = await queued.within(1000);
  proxy.unblock();
  await untilGone(s.sampler, MARKER, 3000);
  seen = await s.sampler.stop();
}, 30_000);

afterAll(async () => {
  proxy?.unblock();
  const app = seen && holderApp(seen, MARKER);
  const last = seen?.seen((b) => b.app === app)?.last;
  console.log(
    `[limit] coordinator cut off past the TTL at limit 1: lease expired ${expiresAt - cutAt} ms after the cut;` +
      ` holder ${holder?.settled ? (holder.ok ? "ok" : holder.code) : "unanswered"} at ${holder?.settled ? holder.at - expiresAt : "-"} ms after its expiry;` +
      ` its backend last seen ${last ? Math.round(last - expiresAt) : "-"} ms after the expiry;` +
      ` next ${next?.settled ? (next.ok ? "ok" : next.code) : "unanswered"}, granted ${nextGrantedAt ? nextGrantedAt - expiresAt : "never"} ms after the expiry;` +
      sceneFigures(s, seen),
  );
  await s?.end();
  await proxy?.close();
});

describe("the holder's coordinator is cut off past the TTL mid-statement (local adapter, LEASE_LIMIT=1)", () => {
  it("never shows more leased backends than the limit, and no login is refused for the role's limit", () => {
    expect(seen.peak()).toBeLessThanOrEqual(1);
    expect(s.log.refused.map((r) => r.code)).toEqual([]);
    expect([holder, next].filter((o) => o.settled && !o.ok && isTooMany(o.error))).toEqual([]);
  });

  it("stops the holder by its own clock at its lease's expiry: LEASE_LOST, the statement may have run", () => {
    expect(holder).toMatchObject({ settled: true, ok: false, code: "LEASE_LOST", executed: "maybe" });
    expect(holder.at - expiresAt).toBeLessThanOrEqual(150);
  });

  it("cancels the holder's statement and closes its connection by the lease's expiry", () => {
    const app = holderApp(seen, MARKER);
    expect(app).not.toBe("");
    // The target: at most 100 ms of run-on after the lease ended.
    expect(seen.seen((b) => b.app === app)!.last - expiresAt).toBeLessThanOrEqual(100);
  });

  it("lets the other process's caller in at the expiry, once the holder's backend has left", () => {
    expect(next).toMatchObject({ settled: true, ok: true });
    const gone = seen.goneAt((b) => b.app === holderApp(seen, MARKER), cutAt)!;
    expect(nextGrantedAt).toBeGreaterThanOrEqual(gone - 20);
    expect(nextGrantedAt - expiresAt).toBeLessThanOrEqual(200);
  });
});
