import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  ASK_GRACE_MS,
  type BlockEffect,
  type LeaseLife,
  abandon,
  createBlock,
  finished,
  granted,
  holds,
  nextReapAt,
  observe,
  reap,
  refused,
  renewed,
  request,
} from "../../src/core/lease-block.ts";

type Step =
  | [kind: "request" | "abandon", id: string]
  | [kind: "grant", lease: string, life?: LeaseLife]
  | [kind: "refuse" | "timeout"]
  | [kind: "finish", request: string]
  | [kind: "observe", waiting: number, sentAgoMs?: number]
  | [kind: "wait", ms: number]
  | [kind: "reap"];

const LONG: LeaseLife = { endsAt: 1e9, reuseUntil: 1e9 };
const WAIT = 1000;

/**
 * A block (maxBlock 2, idleMs 10) after `steps`, one ms apart (plus waits): requests wait up to
 * 1000 ms; a grant or refusal answers the oldest acquire sent; `finish r` releases the hand-on
 * request r got. Returns the effects of the last step.
 */
function run(steps: Step[], yieldToQueue = true) {
  const block = createBlock<string>({ maxBlock: 2, idleMs: 10, yieldToQueue });
  const asks: number[] = [];
  const hands = new Map<string, number>();
  let last: BlockEffect<string>[] = [];
  let now = 0;
  const track = (fx: BlockEffect<string>[] | null) => {
    for (const f of fx ?? []) {
      if (f.kind === "acquire") asks.push(f.ask);
      if (f.kind === "start") hands.set(f.request, f.generation);
    }
    return fx ?? [];
  };
  for (const step of steps) {
    now++;
    if (step[0] === "request") last = track(request(block, step[1], now, now + WAIT));
    else if (step[0] === "abandon") {
      abandon(block, step[1]);
      last = [];
    } else if (step[0] === "grant") last = track(granted(block, asks.shift()!, step[1], step[2] ?? LONG, now));
    else if (step[0] === "refuse" || step[0] === "timeout")
      last = track(refused(block, asks.shift()!, now, step[0] === "timeout"));
    else if (step[0] === "finish") last = track(finished(block, hands.get(step[1])!, now));
    else if (step[0] === "observe") last = track(observe(block, step[1], now, now - (step[2] ?? 0)));
    else if (step[0] === "reap") last = track(reap(block, now));
    else if (step[0] === "wait") now += step[1];
  }
  return { block, last, now, hands };
}

/** Effects without the bookkeeping numbers (generations, acquire numbers, deadlines). */
function plain(fx: BlockEffect<string>[]) {
  return fx.map((f) =>
    f.kind === "start"
      ? { kind: "start", request: f.request, lease: f.lease }
      : f.kind === "acquire"
        ? { kind: "acquire", request: f.request }
        : f,
  );
}

const rel = (lease: string) => ({ kind: "release", lease });
const start = (request: string, lease: string) => ({ kind: "start", request, lease });
const acq = (request: string) => ({ kind: "acquire", request });

describe("lease block: serving local requests", () => {
  it("serves a second local request from the idle block without a round trip", () => {
    const { last, block } = run([
      ["request", "r1"],
      ["grant", "L1"],
      ["observe", 0],
      ["finish", "r1"],
      ["request", "r2"],
    ]);
    expect(plain(last)).toEqual([start("r2", "L1")]);
    expect(block.inUse.size).toBe(1);
  });

  it("returns leases idle for idleMs", () => {
    const idle: Step[] = [
      ["request", "r1"],
      ["grant", "L1"],
      ["observe", 0],
      ["finish", "r1"],
    ];
    // Idle since 4; the reap runs at 5 + wait.
    expect(run([...idle, ["wait", 7], ["reap"]]).last).toEqual([]);
    expect(run([...idle, ["wait", 8], ["reap"]]).last).toEqual([rel("L1")]);
  });

  it("asks for one lease per uncovered waiter, never past maxBlock", () => {
    const { last, block } = run([
      ["request", "r1"],
      ["request", "r2"],
      ["request", "r3"],
    ]);
    expect(plain(last)).toEqual([]);
    expect(block.asks.size).toBe(2);
    expect(block.waiting.map((w) => w.id)).toEqual(["r1", "r2", "r3"]);
  });

  it("a refused acquire fails the oldest waiter no other acquire covers; a timeout with time left asks again", () => {
    const two: Step[] = [
      ["request", "r1"],
      ["request", "r2"],
    ];
    expect(run([...two, ["refuse"]]).last).toEqual([{ kind: "fail", request: "r1", reason: "refused" }]);
    expect(run([...two, ["abandon", "r2"], ["refuse"]]).last).toEqual([]);
    expect(plain(run([["request", "r1"], ["timeout"]]).last)).toEqual([acq("r1")]);
  });
});

describe("lease block: one holder per slot (generations)", () => {
  const handedOn: Step[] = [
    ["request", "A"],
    ["grant", "L1"],
    ["observe", 0],
    ["request", "B"],
    ["request", "C"],
  ];

  it("the current holder's release hands the lease on with a new generation", () => {
    const { last, hands } = run([...handedOn, ["finish", "A"]]);
    expect(plain(last)).toEqual([start("B", "L1")]);
    expect(hands.get("B")).not.toBe(hands.get("A"));
  });

  it("a repeated release by the earlier holder is a no-op: the lease stays with B, C keeps waiting", () => {
    const { block, hands, now } = run([...handedOn, ["finish", "A"]]);
    const before = structuredClone(block);
    expect(finished(block, hands.get("A")!, now + 1)).toBeNull();
    expect(block).toEqual(before);
    expect(block.waiting.map((w) => w.id)).toEqual(["C"]);
    expect([...block.inUse.values()].map((h) => h.lease)).toEqual(["L1"]);
  });

  it("a late release of an earlier hand-on, after the lease idled or went back, changes nothing either", () => {
    const idle = run([
      ["request", "A"],
      ["grant", "L1"],
      ["observe", 0],
      ["finish", "A"],
    ]);
    expect(finished(idle.block, idle.hands.get("A")!, idle.now + 1)).toBeNull();
    expect(idle.block.idle.map((e) => e.lease)).toEqual(["L1"]);
    const back = run([
      ["request", "A"],
      ["grant", "L1"],
      ["observe", 5],
      ["finish", "A"],
    ]);
    expect(back.last).toEqual([rel("L1")]);
    expect(finished(back.block, back.hands.get("A")!, back.now + 1)).toBeNull();
  });

  it("holds finds a lease idle or in use, not one that went back", () => {
    const { block } = run([...handedOn, ["finish", "A"]]);
    expect(holds(block, (l) => l === "L1")).toBe(true);
    expect(holds(block, (l) => l === "L2")).toBe(false);
  });
});

describe("lease block: nothing stranded (reaped on every call)", () => {
  const life = { endsAt: 100, reuseUntil: 40 };
  // maxBlock 2: two holders vanish (torn down) without releasing; r3 waits in the isolate.
  const vanished: Step[] = [
    ["request", "r1"],
    ["request", "r2"],
    ["grant", "L1", life],
    ["grant", "L2", life],
    ["request", "r3"],
  ];

  it("leases in use past their end stop counting: the next call asks for the waiter", () => {
    expect(run(vanished).block.asks.size).toBe(0);
    const { last, block } = run([...vanished, ["wait", 100], ["request", "r4"]]);
    expect(plain(last)).toEqual([acq("r3"), acq("r4")]);
    expect(block.inUse.size).toBe(0);
  });

  it("the release of a reaped hand-on is a no-op: its slot ends at the coordinator by its TTL", () => {
    const { block, hands, now } = run([...vanished, ["wait", 100], ["reap"]]);
    expect(finished(block, hands.get("r1")!, now)).toBeNull();
  });

  it("a renewal moves a lease's end: it is not reaped while its holder keeps it alive", () => {
    const { block, hands, now } = run(vanished);
    renewed(block, hands.get("r1")!, "L1-renewed", 500, now);
    expect(reap(block, 150).filter((f) => f.kind === "acquire")).toHaveLength(1);
    // The renewed lease (its new expiry and proof) is what goes out next.
    expect([...block.inUse.values()].map((h) => h.lease)).toEqual(["L1-renewed"]);
  });

  it("a holder's release past its lease's end sends it back, never hands it on", () => {
    const { block, hands, now } = run(vanished);
    // L2's holder is gone: past its end it stops counting, and r3 gets both acquires' room.
    expect(plain(finished(block, hands.get("r1")!, 100 + now)!)).toEqual([rel("L1"), acq("r3")]);
    expect(block.inUse.size).toBe(0);
  });

  it("a local waiter past its deadline fails on the next call, also when its own timer never ran", () => {
    const { last, block } = run([["request", "r1"], ["request", "r2"], ["request", "r3"], ["wait", WAIT], ["reap"]]);
    expect(last).toEqual(["r1", "r2", "r3"].map((request) => ({ kind: "fail", request, reason: "deadline" })));
    expect(block.waiting).toEqual([]);
  });

  it("an acquire unanswered past its deadline stops counting; its late grant goes back", () => {
    const sent = run([
      ["request", "r1"],
      ["request", "r2"],
    ]);
    const { block } = sent;
    const [a1] = [...block.asks.keys()];
    abandon(block, "r1");
    abandon(block, "r2");
    const late = sent.now + WAIT + ASK_GRACE_MS;
    expect(request(block, "r3", late, late + WAIT).filter((f) => f.kind === "acquire")).toHaveLength(1);
    expect(block.asks.size).toBe(1);
    expect(granted(block, a1!, "L-late", LONG, late + 1)).toEqual([rel("L-late")]);
    expect(block.waiting.map((w) => w.id)).toEqual(["r3"]);
  });

  it("an idle lease too old to hand on goes back instead of serving a request", () => {
    const idle: Step[] = [
      ["request", "A"],
      ["grant", "L1", { endsAt: 1000, reuseUntil: 6 }],
      ["observe", 0],
    ];
    expect(plain(run([...idle, ["finish", "A"], ["request", "B"]]).last)).toEqual([start("B", "L1")]);
    expect(plain(run([...idle, ["wait", 3], ["finish", "A"]]).last)).toEqual([rel("L1")]);
    // Finished young, idle past reuseUntil (within idleMs, on a fresh report): it goes back, B asks.
    expect(plain(run([...idle, ["finish", "A"], ["wait", 3], ["request", "B"]]).last)).toEqual([rel("L1"), acq("B")]);
  });

  it("nextReapAt names the first lifetime that ends", () => {
    const { block } = run(vanished);
    expect(nextReapAt(block)).toBe(100);
    expect(nextReapAt(createBlock({ maxBlock: 1, idleMs: 5 }))).toBeUndefined();
  });
});

describe("lease block: global order across isolates (the order rule on every hand-on)", () => {
  // One busy isolate: r1 holds L1, r2 and r3 wait locally behind it (since t=3 and t=4). What
  // happens to L1 when r1 finishes depends on what the coordinator last said about its own queue,
  // when, and whether the call that brought it was sent before the local waiter came.
  const busy: Step[] = [
    ["request", "r1"],
    ["grant", "L1"],
    ["request", "r2"],
    ["request", "r3"],
  ];
  // An isolate serving one request at a time: r1 finished, L1 idles.
  const single: Step[] = [
    ["request", "r1"],
    ["grant", "L1"],
    ["finish", "r1"],
  ];
  it.each<[string, Step[], boolean, unknown[]]>([
    [
      "nobody waits at the coordinator: the lease goes to the local waiter",
      [...busy, ["observe", 0], ["finish", "r1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "others wait at the coordinator: the lease goes back, and the local waiter queues there",
      [...busy, ["observe", 3], ["finish", "r1"]],
      true,
      [rel("L1"), acq("r3")],
    ],
    [
      "the queue holds only this isolate's own acquire in flight: handed on locally",
      [...busy, ["observe", 1], ["finish", "r1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "the queue emptied again: handed on locally again",
      [...busy, ["observe", 3], ["observe", 0], ["finish", "r1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "keeping leases (yieldToQueue false): handed on whoever waits",
      [...busy, ["observe", 3], ["finish", "r1"]],
      false,
      [start("r2", "L1")],
    ],
    [
      "others wait and no local waiter: a finished lease goes back, it does not idle",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 2],
        ["finish", "r1"],
      ],
      true,
      [rel("L1")],
    ],
    [
      "others wait when a grant for nobody arrives: it goes straight back",
      [
        ["request", "r1"],
        ["abandon", "r1"],
        ["observe", 2],
        ["grant", "L1"],
      ],
      true,
      [rel("L1")],
    ],
    [
      "others start waiting: idle leases go back at once",
      [
        ["request", "r1"],
        ["request", "r2"],
        ["grant", "L1"],
        ["grant", "L2"],
        ["finish", "r1"],
        ["finish", "r2"],
        ["observe", 1],
      ],
      true,
      [rel("L1"), rel("L2")],
    ],
    [
      "the report that nobody waits is stale and was asked for before the local waiter came: the lease goes back and the local waiter asks again",
      // The report (t=5) answers a call sent at t=3, when r2 came: not before it.
      [...busy, ["observe", 0, 2], ["wait", 50], ["finish", "r1"]],
      true,
      [rel("L1"), acq("r3")],
    ],
    [
      "the report is fresh enough: handed on, whenever the waiter came",
      [...busy, ["observe", 0, 2], ["wait", 48], ["finish", "r1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "stale, but asked for after the local waiter came, with the coordinator's queue empty: handed on",
      // Sent at t=4 (r2 waits since t=3): every caller at the coordinator now came after r2.
      [...busy, ["observe", 0, 1], ["wait", 500], ["finish", "r1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "stale and asked for after the local waiter came, but the queue held one waiter (maybe another isolate's, maybe this one's acquire in flight): back",
      [...busy, ["observe", 1, 1], ["wait", 50], ["finish", "r1"]],
      true,
      [rel("L1"), acq("r3")],
    ],
    [
      "asked for after the first local waiter came, not the second: r2 is served, then r3's turn needs a fresh report (the acquire in flight covers r3)",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["request", "r2"],
        ["observe", 0],
        ["request", "r3"],
        ["wait", 60],
        ["finish", "r1"],
        ["finish", "r2"],
      ],
      true,
      [rel("L1")],
    ],
    [
      "others wait: back, however long the local waiter has waited",
      [...busy, ["observe", 0, 1], ["observe", 3, 1], ["wait", 500], ["finish", "r1"]],
      true,
      [rel("L1"), acq("r3")],
    ],
    [
      "a new request never takes an idle lease on an old report, even one asked for after it came",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 0, 10],
        ["wait", 60],
        ["finish", "r1"],
        ["request", "r2"],
      ],
      true,
      [rel("L1"), acq("r2")],
    ],
    [
      "stale, every hand-on: a second finished lease goes back too",
      [
        ...busy,
        ["request", "r4"],
        ["grant", "L2"],
        ["observe", 0, 4],
        ["wait", 60],
        ["finish", "r1"],
        ["finish", "r2"],
      ],
      true,
      [rel("L2"), acq("r4")],
    ],
    [
      "one request at a time, fresh report: the idle lease serves the next request",
      [...single, ["observe", 0], ["request", "r2"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "one request at a time, stale report: the idle lease goes back and the request asks the coordinator",
      // r1 ran 50 ms: L1 idles 1 ms (young), the report is 52 ms old.
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 0],
        ["wait", 50],
        ["finish", "r1"],
        ["request", "r2"],
      ],
      true,
      [rel("L1"), acq("r2")],
    ],
    [
      "one request at a time, no report ever: the idle lease goes back",
      [...single, ["request", "r2"]],
      true,
      [rel("L1"), acq("r2")],
    ],
    [
      "stale with no local waiter: the lease idles until a request needs it",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 0],
        ["wait", 60],
        ["finish", "r1"],
      ],
      true,
      [],
    ],
    [
      "stale while keeping leases (yieldToQueue false): handed on",
      [...busy, ["observe", 0], ["wait", 60], ["finish", "r1"]],
      false,
      [start("r2", "L1")],
    ],
    [
      "stale, a fresh grant from the coordinator goes to the local waiter: it is not a hand-on",
      [
        ["request", "r1"],
        ["wait", 60],
        ["grant", "L1"],
      ],
      true,
      [start("r1", "L1")],
    ],
    [
      "nobody waits: idle leases stay",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["finish", "r1"],
        ["observe", 0],
      ],
      true,
      [],
    ],
  ])("%s", (_name, steps, yieldToQueue, effects) => {
    expect(plain(run(steps, yieldToQueue).last)).toEqual(effects);
  });

  it("counts as others only the queue beyond this isolate's acquires in flight", () => {
    const { block } = run([
      ["request", "r1"],
      ["request", "r2"],
      ["observe", 5],
    ]);
    expect(block.asks.size).toBe(2);
    expect(block.queuedElsewhere).toBe(3);
  });
});

describe("lease block: invariants under any interleaving", () => {
  type Op =
    | "request"
    | "grant"
    | "refuse"
    | "finish"
    | "vanish"
    | "replay"
    | "renew"
    | "reap"
    | "abandon"
    | { observe: number; sentAgoMs: number }
    | { wait: number };
  const op = fc.oneof(
    fc.constantFrom<Op>("request", "request", "grant", "grant", "refuse", "finish", "finish"),
    fc.constantFrom<Op>("vanish", "replay", "renew", "reap", "abandon"),
    fc.record({ observe: fc.constantFrom(0, 0, 1, 9), sentAgoMs: fc.constantFrom(0, 1, 5, 40) }),
    fc.integer({ min: 1, max: 80 }).map((ms) => ({ wait: ms })),
  );

  it("one request per lease, no lease or request lost, never past maxBlock, hand-ons only to requests a report of nobody else waiting covers", {
    timeout: 60_000,
  }, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.boolean(),
        fc.array(op, { minLength: 10, maxLength: 120, size: "max" }),
        (maxBlock, yieldToQueue, ops) => {
          const b = createBlock<number>({ maxBlock, idleMs: 15, yieldToQueue });
          let now = 0;
          let seq = 0;
          let grants = 0;
          const asks: number[] = [];
          const deadlines = new Map<string, number>();
          // Requests running with a lease, by generation; a vanished one keeps its lease until its end.
          const running = new Map<number, { request: string; lease: number }>();
          // Leases whose holders vanished without a release: never handed on or released by the block again.
          const vanished = new Set<number>();
          const ends = new Map<number, LeaseLife>();
          const done: number[] = [];
          const released: number[] = [];
          const outcome = new Map<string, string>();
          // The last report: whether it left nobody else waiting, whether the queue was empty, when it came and when its call was sent.
          let report = { none: false, empty: false, at: Number.NEGATIVE_INFINITY, sentAt: Number.NEGATIVE_INFINITY };
          const arrived = new Map<string, number>();
          // Whether this step called the block: every call reaps first (a release that does not count changes nothing).
          let called = false;
          const apply = (fx: BlockEffect<number>[] | null, handOn: boolean) => {
            called ||= fx !== null;
            for (const f of fx ?? []) {
              if (f.kind === "acquire") asks.push(f.ask);
              if (f.kind === "release") {
                expect(released).not.toContain(f.lease);
                expect(vanished.has(f.lease)).toBe(false);
                released.push(f.lease);
              }
              if (f.kind === "fail") {
                expect(outcome.has(f.request)).toBe(false);
                if (f.reason === "deadline") expect(now).toBeGreaterThanOrEqual(deadlines.get(f.request)!);
                outcome.set(f.request, "failed");
              }
              if (f.kind === "start") {
                expect(outcome.has(f.request)).toBe(false);
                outcome.set(f.request, "started");
                // One request per slot: the lease is in no other request's hands, nor a vanished one's.
                for (const r of running.values()) expect(r.lease).not.toBe(f.lease);
                expect(vanished.has(f.lease)).toBe(false);
                expect(released).not.toContain(f.lease);
                expect(now).toBeLessThan(ends.get(f.lease)!.endsAt);
                if (handOn) {
                  expect(now).toBeLessThanOrEqual(ends.get(f.lease)!.reuseUntil);
                  // Handed on in the isolate only while the coordinator said that nobody else waits:
                  // lately, or with its queue empty in answer to a call sent after the request came.
                  const fresh = now - report.at <= 50;
                  const older = report.empty && arrived.get(f.request)! < report.sentAt;
                  if (yieldToQueue) expect(report.none && (fresh || older)).toBe(true);
                }
                running.set(f.generation, { request: f.request, lease: f.lease });
              }
            }
          };
          for (const o of ops) {
            now++;
            called = false;
            if (o === "request") {
              const id = `r${seq++}`;
              deadlines.set(id, now + 200);
              arrived.set(id, now);
              apply(request(b, id, now, now + 200), true);
            } else if (o === "grant" && asks.length > 0) {
              const lease = ++grants;
              const life = { endsAt: now + 60 + (lease % 5) * 40, reuseUntil: now + 30 + (lease % 3) * 20 };
              ends.set(lease, life);
              apply(granted(b, asks.shift()!, lease, life, now), false);
            } else if (o === "refuse" && asks.length > 0)
              apply(refused(b, asks.shift()!, now, grants % 2 === 0), false);
            else if ((o === "finish" || o === "vanish") && running.size > 0) {
              const [generation, r] = running.entries().next().value!;
              running.delete(generation);
              if (o === "vanish") vanished.add(r.lease);
              else {
                done.push(generation);
                apply(finished(b, generation, now), true);
              }
            } else if (o === "replay" && done.length > 0) {
              // A repeated or late release of an earlier hand-on: never counts.
              expect(finished(b, done[grants % done.length]!, now)).toBeNull();
            } else if (o === "renew" && running.size > 0) {
              const [generation, r] = running.entries().next().value!;
              const life = ends.get(r.lease)!;
              if (now < life.endsAt) ends.set(r.lease, { ...life, endsAt: Math.max(life.endsAt, now + 100) });
              apply(renewed(b, generation, r.lease, now + 100, now), false);
            } else if (o === "reap") apply(reap(b, now), false);
            else if (o === "abandon" && b.waiting.length > 0) {
              const id = b.waiting[grants % b.waiting.length]!.id;
              expect(abandon(b, id)).toBe(true);
              outcome.set(id, "abandoned");
            } else if (typeof o === "object" && "observe" in o) {
              // Nobody else: at most this isolate's own acquires in flight in the queue.
              report = { none: o.observe <= asks.length, empty: o.observe === 0, at: now, sentAt: now - o.sentAgoMs };
              apply(observe(b, o.observe, now, now - o.sentAgoMs), false);
            } else if (typeof o === "object") now += o.wait;
            expect(b.idle.length + b.inUse.size + b.asks.size).toBeLessThanOrEqual(maxBlock);
            // Every granted lease is running, idle, released or with a vanished holder, exactly once.
            const idle = b.idle.map((e) => e.lease);
            const inUse = [...b.inUse.values()].map((h) => h.lease);
            for (const lease of idle) expect(inUse).not.toContain(lease);
            expect(new Set([...idle, ...inUse, ...released]).size).toBe(idle.length + inUse.length + released.length);
            const lost = [...ends.keys()].filter(
              (l) => !idle.includes(l) && !inUse.includes(l) && !released.includes(l) && !vanished.has(l),
            );
            // A lease absent from the block was reaped in use past its end (its holder's release came late or never).
            for (const l of lost) expect(now).toBeGreaterThanOrEqual(ends.get(l)!.endsAt);
            // Every request is started, failed, abandoned or waiting; none waits past its deadline after a call.
            expect(outcome.size + b.waiting.length).toBe(seq);
            if (called) for (const w of b.waiting) expect(w.deadline).toBeGreaterThan(now);
            // While others wait at the coordinator (and the block yields), nothing idles in the isolate.
            if (yieldToQueue && b.queuedElsewhere > 0) expect(b.idle).toEqual([]);
          }
        },
      ),
      { numRuns: 1000 },
    );
  });
});
