import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Outcome,
  type Sampled,
  type Scene,
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

// An operator revokes a lease while its statement runs (LEASE_LIMIT=1, a role limited to 1 login,
// pg_stat_activity sampled every ~10 ms). The holder hears of it at its next renewal (a third of
// the 900 ms TTL): it must stop — statement cancelled, connection closed, then the slot given back —
// and its caller is told LEASE_LOST. The next caller, queued meanwhile, is granted once the holder
// has stopped, and no later than the revoked lease's expiry.
const TTL_MS = 900;
const BEAT_MS = TTL_MS / 3;
const MARKER = "pg_sleep(5) /* revoked */";

let s: Scene;
let seen: Sampled;
let holder: Outcome<unknown>;
let next: Outcome<unknown>;
let revokedAt = 0;
let expiresAt = 0;
let nextGrantedAt = 0;
const nextErrors: unknown[] = [];

beforeAll(async () => {
  s = await scene(1);
  const a = await s.open({ LEASE_TTL_MS: String(TTL_MS) });
  const b = await s.open({ LEASE_TTL_MS: String(TTL_MS) });
  const call = watch(a.sql((sql) => sql.unsafe(`SELECT ${MARKER}`), { holder: "revoked" }));
  await untilRunning(s.sampler, MARKER);
  // Queued behind the holder, from another process's view of the pool.
  const queued = nextCaller(b, { waitMs: 5000 }, (at) => {
    nextGrantedAt = at;
  });
  await waitFor(async () => (await b.operator!.stats()).waiting === 1, 1000);
  const stats = await a.operator!.stats();
  const lease = stats.leases.find((l) => l.holder === "revoked");
  if (!lease) throw new Error(`no held lease of the holder in ${JSON.stringify(stats.leases)}`);
  revokedAt = Date.now();
  expiresAt = revokedAt + lease.expiresInMs;
  expect(await a.operator!.revoke(lease.idPrefix)).toMatchObject({ ok: true });
  // Bounded: the old code lets the statement run its 5 s and answers normally.
  holder = await call.within(7000);
  next = await queued.within(8000);
  if (next.settled && !next.ok) nextErrors.push(next.error);
  // The tail: what the database still shows once both callers have their answers.
  await untilGone(s.sampler, MARKER, 5000);
  seen = await s.sampler.stop();
}, 30_000);

afterAll(async () => {
  const gone = seen?.goneAt((b) => b.app === holderApp(seen, MARKER), revokedAt);
  console.log(
    `[limit] revoke at limit 1: holder ${holder?.settled ? (holder.ok ? "ok" : holder.code) : "unanswered"}` +
      ` ${holder?.at ? holder.at - revokedAt : "-"} ms after the revoke; statement gone ${gone ? Math.round(gone - revokedAt) : "never"} ms after it;` +
      ` next ${next?.settled ? (next.ok ? "ok" : next.code) : "unanswered"}, granted ${nextGrantedAt ? nextGrantedAt - revokedAt : "never"} ms after it (lease expiry +${expiresAt - revokedAt} ms);` +
      sceneFigures(s, seen),
  );
  await s?.end();
});

describe("an operator revokes a lease mid-statement (local adapter, LEASE_LIMIT=1)", () => {
  it("samples pg_stat_activity every ≤ 20 ms", () => {
    expect(seen.gaps().medianMs).toBeLessThanOrEqual(20);
  });

  it("never shows more leased backends than the limit, and no login is refused for the role's limit", () => {
    expect(seen.peak()).toBeLessThanOrEqual(1);
    expect(s.log.refused.map((r) => r.code)).toEqual([]);
    expect(nextErrors.filter(isTooMany)).toEqual([]);
  });

  it("tells the revoked caller LEASE_LOST (the statement may have run), at its next renewal", () => {
    expect(holder).toMatchObject({ settled: true, ok: false, code: "LEASE_LOST", executed: "maybe" });
    expect(holder.at - revokedAt).toBeLessThanOrEqual(BEAT_MS + 250);
  });

  it("cancels the revoked statement and closes its connection within 100 ms of the holder hearing", () => {
    const app = holderApp(seen, MARKER);
    const gone = seen.goneAt((b) => b.app === app, revokedAt);
    expect(gone).not.toBeNull();
    // The holder hears at its next renewal, at most one beat after the revoke (plus the call itself).
    expect(gone! - revokedAt).toBeLessThanOrEqual(BEAT_MS + 100 + 50);
    // Its backend is gone by the time its caller has the answer (give or take a sample).
    expect(seen.seen((b) => b.app === app)!.last - holder.at).toBeLessThanOrEqual(100);
  });

  it("grants the next caller once the holder stopped, no later than the revoked lease's expiry", () => {
    expect(next).toMatchObject({ settled: true, ok: true });
    const gone = seen.goneAt((b) => b.app === holderApp(seen, MARKER), revokedAt)!;
    // Granted (its connection open) only once the revoked backend left the database…
    expect(nextGrantedAt).toBeGreaterThanOrEqual(gone - 20);
    // …and by the revoked lease's expiry (opening a connection aside).
    expect(nextGrantedAt).toBeLessThanOrEqual(expiresAt + 100);
  });
});
