import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Outcome, type Sampled, type Scene, isTooMany, scene, sleep, waitFor, watch } from "./harness.ts";
import { AFTER_STALL, DURING_STALL, type StallEvent } from "./stall-events.ts";

// A holder's event loop stalls mid-statement for longer than its lease's TTL (a child process
// blocked in Atomics.wait; LEASE_LIMIT=1, a role limited to 1 login). Meanwhile the coordinator
// (another process's, with a caller queued) reaps the lease at its expiry and grants it again.
// When the holder wakes, its lease has ended by its own clock: it must stop before it touches the
// database again — its next statement never runs, its connection is closed, its caller is told
// LEASE_LOST — and the database never shows more leased backends than the limit.
//
// A frozen process keeps its socket, so Postgres keeps its backend: only the database can end it.
// Both pools run with LEASE_ENFORCE=terminate: the holder's connections carry its lease in
// `application_name`, and the coordinator that reaps the lease terminates that backend (and waits
// for it to exit) before it commits the grant of the slot.
const TTL_MS = 900;
const STALL_MS = 2500;
const HOLDER = fileURLToPath(new URL("./stall-holder.ts", import.meta.url));

let s: Scene;
let seen: Sampled;
let child: ChildProcess;
const events: Array<StallEvent & { seenAt: number }> = [];
let done: Extract<StallEvent, { event: "done" }> | undefined;
let next: Outcome<unknown>;
let stalledAt = 0;
let wokeAt = 0;
let regrantedAt = 0;
let nextGrantedAt = 0;

const stalledApp = () => `${s.pool}-stalled`;
const isStalled = (b: { app: string }) => b.app.startsWith(stalledApp());

function nextEvent(name: StallEvent["event"], timeoutMs: number): Promise<StallEvent> {
  return waitFor(() => events.some((e) => e.event === name), timeoutMs).then((at) => {
    if (at === null) throw new Error(`the stalled holder sent no \`${name}\` in ${timeoutMs} ms`);
    return events.find((e) => e.event === name)!;
  });
}

beforeAll(async () => {
  s = await scene(1);
  const other = await s.open({ LEASE_TTL_MS: String(TTL_MS), LEASE_ENFORCE: "terminate" });
  child = fork(HOLDER, [], {
    env: {
      ...process.env,
      POOL: s.pool,
      APP: stalledApp(),
      ROLE_URL: s.role.url,
      LEASE_TTL_MS: String(TTL_MS),
      LEASE_ENFORCE: "terminate",
      STALL_MS: String(STALL_MS),
    },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  child.on("message", (e: StallEvent) => events.push({ ...e, seenAt: Date.now() }));
  await nextEvent("ready", 10_000);
  child.send({ cmd: "run" });
  stalledAt = ((await nextEvent("stalling", 5000)) as { at: number }).at;
  // Another process's caller, queued behind the stalled holder.
  const queued = watch(
    other.sql(
      async (sql) => {
        nextGrantedAt = Date.now();
        return await sql`SELECT 1 AS one`;
      },
      { holder: "next", waitMs: 5000 },
    ),
  );
  // The coordinator reaps the stalled holder's lease at its expiry and grants the queued caller.
  regrantedAt =
    (await waitFor(
      async () => (await other.operator!.stats()).leases.some((l) => l.holder === "next"),
      STALL_MS + 2000,
    )) ?? 0;
  wokeAt = ((await nextEvent("woke", STALL_MS + 3000)) as { at: number }).at;
  done = (await nextEvent("done", 8000)) as Extract<StallEvent, { event: "done" }>;
  next = await queued.within(6000);
  await waitFor(() => !s.sampler.samples.at(-1)!.backends.some(isStalled), 5000);
  await sleep(200);
  seen = await s.sampler.stop();
}, 40_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child.once("exit", r));
    child.send({ cmd: "exit" });
    await Promise.race([exited, sleep(3000)]);
    if (child.exitCode === null) child.kill("SIGKILL");
  }
  const last = seen?.seen(isStalled)?.last;
  console.log(
    `[limit] event loop stalled ${STALL_MS} ms (TTL ${TTL_MS}) at limit 1: re-granted ${regrantedAt ? regrantedAt - stalledAt : "never"} ms into the stall;` +
      ` holder ${done ? (done.ok ? "ok" : done.code) : "unanswered"}, statement after the stall ${done?.ranAfterStall ? "ran" : "did not run"};` +
      ` its backend last seen ${last ? Math.round(last - wokeAt) : "-"} ms after it woke;` +
      ` next ${next?.settled ? (next.ok ? "ok" : next.code) : "unanswered"}, granted ${nextGrantedAt ? nextGrantedAt - wokeAt : "never"} ms after the holder woke;` +
      ` peak ${seen?.peak()}; refused logins ${[...(s?.log.refused ?? []), ...(done?.refused ?? [])].map((r) => r.code).join(",") || "none"};` +
      ` lingering ${JSON.stringify(seen?.lingering(new Map([...s.log.closed, ...(done?.closed ?? [])])))};` +
      ` sampling ${JSON.stringify(seen?.gaps())}`,
  );
  await s?.end();
});

describe("a holder's event loop stalls past its lease's TTL mid-statement (local adapter, LEASE_LIMIT=1)", () => {
  it("was stalled mid-statement, and the coordinator reaped its lease and granted it again during the stall", () => {
    expect(seen.seen((b) => isStalled(b) && b.query.includes("/* stalled */"))).not.toBeNull();
    expect(DURING_STALL).toContain("/* stalled */");
    expect(regrantedAt).toBeGreaterThan(stalledAt);
    expect(regrantedAt).toBeLessThan(wokeAt);
  });

  it("never shows more leased backends than the limit, and no login is refused for the role's limit", () => {
    expect(seen.peak()).toBeLessThanOrEqual(1);
    expect([...s.log.refused, ...done!.refused].map((r) => r.code)).toEqual([]);
    expect(next.settled && !next.ok && isTooMany(next.error)).toBe(false);
  });

  it("stops the holder when it wakes, before it touches the database again: LEASE_LOST", () => {
    // Cut off before its COMMIT: the server rolls the transaction back, so nothing of it ran.
    expect(done).toMatchObject({ ok: false, code: "LEASE_LOST", executed: "no", ranAfterStall: false });
    expect(seen.seen((b) => b.query.includes("/* after-stall */"))).toBeNull();
    expect(AFTER_STALL).toContain("/* after-stall */");
  });

  it("closes the holder's connection within 100 ms of waking", () => {
    expect(seen.seen(isStalled)!.last - wokeAt).toBeLessThanOrEqual(100);
  });

  it("serves the re-granted caller", () => {
    expect(next).toMatchObject({ settled: true, ok: true });
    expect(nextGrantedAt).toBeGreaterThanOrEqual(seen.seen(isStalled)!.last - 20);
  });
});
