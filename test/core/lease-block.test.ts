import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type BlockEffect,
  type BlockState,
  abandon,
  createBlock,
  expireIdle,
  finished,
  granted,
  observe,
  refused,
  request,
} from "../../src/core/lease-block.ts";

type Step =
  | [kind: "request" | "abandon", id: string]
  | [kind: "grant" | "finish", lease: string]
  | [kind: "observe", waiting: number]
  | [kind: "wait", ms: number];

/** A block with maxBlock 2, after `steps`; the effects of the last step. */
function run(steps: Step[], yieldToQueue = true): { block: BlockState<string>; last: BlockEffect<string>[] } {
  const block = createBlock<string>({ maxBlock: 2, idleMs: 10, yieldToQueue });
  let last: BlockEffect<string>[] = [];
  let now = 0;
  for (const step of steps) {
    now++;
    if (step[0] === "request") last = request(block, step[1], now);
    else if (step[0] === "abandon") {
      abandon(block, step[1]);
      last = [];
    } else if (step[0] === "grant") last = granted(block, step[1], now);
    else if (step[0] === "finish") last = finished(block, step[1], now);
    else if (step[0] === "observe") last = observe(block, step[1], now);
    else if (step[0] === "wait") now += step[1];
  }
  return { block, last };
}

const rel = (lease: string) => ({ kind: "release", lease });
const start = (request: string, lease: string) => ({ kind: "start", request, lease });
const acq = { kind: "acquire" };

describe("lease block: global order across isolates", () => {
  // One busy isolate: r1 holds L1, r2 waits locally behind it. What happens to L1 when r1 finishes
  // depends on what the coordinator last said about its own queue.
  const busy: Step[] = [
    ["request", "r1"],
    ["grant", "L1"],
    ["request", "r2"],
    ["request", "r3"],
  ];
  it.each<[string, Step[], boolean, unknown[]]>([
    [
      "nobody waits at the coordinator: the lease goes to the local waiter",
      [...busy, ["observe", 0], ["finish", "L1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "others wait at the coordinator: the lease goes back, and the local waiter queues there",
      [...busy, ["observe", 3], ["finish", "L1"]],
      true,
      [rel("L1"), acq],
    ],
    [
      "the queue holds only this isolate's own acquire in flight: handed on locally",
      [...busy, ["observe", 1], ["finish", "L1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "the queue emptied again: handed on locally again",
      [...busy, ["observe", 3], ["observe", 0], ["finish", "L1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "keeping leases (yieldToQueue false): handed on whoever waits",
      [...busy, ["observe", 3], ["finish", "L1"]],
      false,
      [start("r2", "L1")],
    ],
    [
      "others wait and no local waiter: a finished lease goes back, it does not idle",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 2],
        ["finish", "L1"],
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
        ["finish", "L1"],
        ["finish", "L2"],
        ["observe", 1],
      ],
      true,
      [rel("L1"), rel("L2")],
    ],
    [
      "the report that nobody waits is stale: this lease goes back and the local waiter's acquire asks again",
      [...busy, ["observe", 0], ["wait", 50], ["finish", "L1"]],
      true,
      [rel("L1"), acq],
    ],
    [
      "the report is fresh enough: handed on",
      [...busy, ["observe", 0], ["wait", 48], ["finish", "L1"]],
      true,
      [start("r2", "L1")],
    ],
    [
      "stale, but a lease already went back to ask within staleAfterMs: handed on",
      [...busy, ["request", "r4"], ["grant", "L2"], ["observe", 0], ["wait", 60], ["finish", "L1"], ["finish", "L2"]],
      true,
      [start("r3", "L2")],
    ],
    [
      "stale with no local waiter: the lease idles (nothing to ask with)",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["observe", 0],
        ["wait", 60],
        ["finish", "L1"],
      ],
      true,
      [],
    ],
    [
      "stale while keeping leases (yieldToQueue false): handed on",
      [...busy, ["observe", 0], ["wait", 60], ["finish", "L1"]],
      false,
      [start("r2", "L1")],
    ],
    [
      "nobody waits: idle leases stay",
      [
        ["request", "r1"],
        ["grant", "L1"],
        ["finish", "L1"],
        ["observe", 0],
      ],
      true,
      [],
    ],
  ])("%s", (_name, steps, yieldToQueue, effects) => {
    expect(run(steps, yieldToQueue).last).toEqual(effects);
  });

  it("counts as others only the queue beyond this isolate's acquires in flight", () => {
    const { block } = run([
      ["request", "r1"],
      ["request", "r2"],
      ["observe", 5],
    ]);
    expect(block.inFlight).toBe(2);
    expect(block.queuedElsewhere).toBe(3);
  });

  it("never holds or asks for more than maxBlock, and loses no lease or request, whatever the coordinator reports", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.boolean(),
        fc.array(
          fc.oneof(fc.constantFrom("request", "grant", "refuse", "finish", "tick"), fc.integer({ min: 0, max: 4 })),
          { maxLength: 80 },
        ),
        (maxBlock, yieldToQueue, steps) => {
          const b = createBlock<number>({ maxBlock, idleMs: 3, yieldToQueue });
          let now = 0;
          let seq = 0;
          let inFlight = 0;
          let grants = 0;
          let started = 0;
          let failed = 0;
          let requested = 0;
          const running: number[] = [];
          const released: number[] = [];
          const apply = (fx: BlockEffect<number>[]) => {
            for (const f of fx) {
              if (f.kind === "acquire") inFlight++;
              if (f.kind === "start") {
                started++;
                running.push(f.lease);
              }
              if (f.kind === "release") released.push(f.lease);
            }
          };
          for (const step of steps) {
            now++;
            if (typeof step === "number") apply(observe(b, step, now));
            else if (step === "request") {
              requested++;
              apply(request(b, `r${seq++}`, now));
            } else if (step === "grant" && inFlight > 0) {
              inFlight--;
              apply(granted(b, ++grants, now));
            } else if (step === "refuse" && inFlight > 0) {
              inFlight--;
              if (refused(b) !== undefined) failed++;
            } else if (step === "finish" && running.length > 0) apply(finished(b, running.shift()!, now));
            else if (step === "tick") apply(expireIdle(b, now));
            expect(b.idle.length + b.inUse + b.inFlight).toBeLessThanOrEqual(maxBlock);
            expect(b.inFlight).toBe(inFlight);
            // Every lease granted is running, idle or released, exactly once.
            expect(running.length + b.idle.length + released.length).toBe(grants);
            expect(new Set(released).size).toBe(released.length);
            // Every request is started, failed or still waiting locally.
            expect(started + failed + b.waiting.length).toBe(requested);
            // While others wait at the coordinator (and the block yields), nothing idles in the isolate.
            if (yieldToQueue && b.queuedElsewhere > 0) expect(b.idle).toEqual([]);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
