import { env } from "cloudflare:workers";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { describe, expect, it } from "vitest";
import { holdLease } from "../../src/client/hold.ts";
import { type ShardedGrant, ShardedLeases, createIsolateShards, shardName } from "../../src/client/sharded-leases.ts";
import { ATTRIBUTES, SPANS } from "../../src/tracing.ts";

// The lease spans in real workerd, from a sharded pool of real coordinator objects, recorded by
// OpenTelemetry's own SDK: a Worker passes its tracer the same way a Node process does.
describe("lease spans in workerd", () => {
  it("a sharded pool's wait and hold spans name the shard that granted the lease", async () => {
    const exporter = new InMemorySpanExporter();
    const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer("t");
    const pool = `tracing-shards-${Date.now()}`;
    const names = [0, 1].map((i) => shardName(pool, i, 2));
    const leases = new ShardedLeases({
      coordinators: names.map((n) => env.COORDINATOR_DO.getByName(n)),
      isolate: createIsolateShards({ shards: 2, limit: 3 }),
      waitMs: 400,
      pool,
      tracer,
    });
    // The pool's root plans for both shards, and each has its share before the traced leases (a
    // shard without one queues its first caller for one report to the root).
    await env.COORDINATOR_DO.getByName(pool).setLayout({ count: 2, split: "demand" });
    for (const n of names) {
      const r = await env.COORDINATOR_DO.getByName(n).acquire({ waitMs: 5000 });
      if (r.ok) await env.COORDINATOR_DO.getByName(n).release({ leaseId: r.lease.id, fence: r.lease.fence });
    }
    const grants: ShardedGrant[] = [];
    for (let i = 0; i < 3; i++) await holdLease(leases, ({ lease }) => void grants.push(lease as ShardedGrant));
    await expect.poll(() => exporter.getFinishedSpans().filter((s) => s.name === SPANS.hold).length).toBe(3);
    const spans = exporter.getFinishedSpans();
    for (const name of [SPANS.wait, SPANS.hold]) {
      const mine = spans.filter((s) => s.name === name);
      expect(mine.map((s) => [s.attributes[ATTRIBUTES.shard], s.attributes[ATTRIBUTES.fence]])).toEqual(
        grants.map((g) => [g.shard, g.fence]),
      );
      for (const s of mine) expect(s.attributes).toMatchObject({ [ATTRIBUTES.pool]: pool, [ATTRIBUTES.position]: 0 });
    }
  });
});
