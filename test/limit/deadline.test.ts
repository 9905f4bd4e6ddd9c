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
  waitFor,
  watch,
} from "./harness.ts";

// A request's deadline passes mid-statement (DB_DEADLINE_MS=1000, a 4 s statement; LEASE_LIMIT=1, a
// role limited to 1 login). The caller is answered DEADLINE_EXCEEDED at the deadline; the statement
// is cancelled (it runs under a statement_timeout from the deadline anyway), its connection closed,
// and the slot given back at once: the next caller, with the same deadline, is granted at once.
const DEADLINE_MS = 1000;
const MARKER = "pg_sleep(4) /* deadline */";

let s: Scene;
let seen: Sampled;
let first: Outcome<unknown>;
let next: Outcome<unknown>;
let startedAt = 0;
let nextGrantedAt = 0;
let timeout = "";

beforeAll(async () => {
  s = await scene(1);
  const pool = await s.open({ DB_DEADLINE_MS: String(DEADLINE_MS) });
  // What a leased connection runs under (before the scenario, on its own lease).
  const [row] = await pool.sql((sql) => sql`SELECT current_setting('statement_timeout') AS timeout`);
  timeout = String(row?.timeout);
  await waitFor(() => s.sampler.samples.at(-1)!.backends.length === 0, 2000);
  startedAt = Date.now();
  const call = watch(pool.db.query(`SELECT ${MARKER}`, [], { holder: "deadline" }));
  // Bounded: the old code answers at the deadline but its statement runs its 4 s.
  first = await call.within(6000);
  const after = nextCaller(pool, {}, (at) => {
    nextGrantedAt = at;
  });
  next = await after.within(6000);
  await untilGone(s.sampler, MARKER, 5000);
  seen = await s.sampler.stop();
}, 30_000);

afterAll(async () => {
  const app = seen && holderApp(seen, MARKER);
  const last = seen?.seen((b) => b.app === app)?.last;
  console.log(
    `[limit] deadline ${DEADLINE_MS} ms at limit 1: caller ${first?.settled ? (first.ok ? "ok" : first.code) : "unanswered"}` +
      ` at ${first?.at ? first.at - startedAt : "-"} ms; backend last seen ${last && first?.at ? Math.round(last - first.at) : "-"} ms after the answer;` +
      ` next ${next?.settled ? (next.ok ? "ok" : next.code) : "unanswered"}, granted ${nextGrantedAt && first?.at ? nextGrantedAt - first.at : "never"} ms after the answer;` +
      ` statement_timeout ${timeout};${sceneFigures(s, seen)}`,
  );
  await s?.end();
});

/** Postgres's `statement_timeout` text (`0`, `900ms`, `1s`, `2min`) in ms. */
function durationMs(text: string): number {
  const m = /^(\d+)\s*(ms|s|min|h)?$/.exec(text.trim());
  if (!m) return Number.NaN;
  return Number(m[1]) * ({ ms: 1, s: 1000, min: 60_000, h: 3_600_000 }[m[2] ?? "ms"] ?? 1);
}

describe("a request's deadline passes mid-statement (local adapter, LEASE_LIMIT=1, DB_DEADLINE_MS=1000)", () => {
  it("runs leased statements under a statement_timeout no longer than the deadline", () => {
    const ms = durationMs(timeout);
    expect(ms).toBeGreaterThan(0);
    expect(ms).toBeLessThanOrEqual(DEADLINE_MS);
  });

  it("never shows more leased backends than the limit, and no login is refused for the role's limit", () => {
    expect(seen.peak()).toBeLessThanOrEqual(1);
    expect(s.log.refused.map((r) => r.code)).toEqual([]);
    expect([first, next].filter((o) => o.settled && !o.ok && isTooMany(o.error))).toEqual([]);
  });

  it("answers DEADLINE_EXCEEDED (the statement may have run) at the deadline", () => {
    expect(first).toMatchObject({ settled: true, ok: false, code: "DEADLINE_EXCEEDED", executed: "maybe" });
    expect(first.at - startedAt).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
    expect(first.at - startedAt).toBeLessThanOrEqual(DEADLINE_MS + 200);
  });

  it("cancels the statement and closes its connection within 100 ms of the answer", () => {
    const app = holderApp(seen, MARKER);
    expect(app).not.toBe("");
    expect(seen.seen((b) => b.app === app)!.last - first.at).toBeLessThanOrEqual(100);
  });

  it("grants the next caller at once", () => {
    expect(next).toMatchObject({ settled: true, ok: true });
    // Its connection opened, too, within this of the first caller's answer…
    expect(nextGrantedAt - first.at).toBeLessThanOrEqual(200);
    // …and only once the first caller's backend had left (the slot comes back when the server closed it).
    const app = holderApp(seen, MARKER);
    expect(nextGrantedAt).toBeGreaterThanOrEqual(seen.goneAt((b) => b.app === app, startedAt)! - 20);
  });
});
