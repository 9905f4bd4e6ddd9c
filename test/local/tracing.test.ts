import { context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { MeterProvider, MetricReader } from "@opentelemetry/sdk-metrics";
import postgres, { type Sql } from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalPool, localPool } from "../../local/pool.ts";
import type { Leases } from "../../src/client/leases.ts";
import { LeaseError } from "../../src/core/errors.ts";
import { driver } from "../../src/drivers/postgres.ts";
import { ATTRIBUTES, SPANS, leaseMetrics } from "../../src/tracing.ts";
import { TEST_URL } from "../db/helpers.ts";
import { forgetPools } from "./helpers.ts";

// The spans of the lease lifecycle, recorded by OpenTelemetry's own SDK (in-memory exporter) from
// local pools on the real Postgres: what a user's trace shows for each way a lease can go.
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
// OpenTelemetry's `Tracer`, passed where leasegate's structural `LeaseTracer` is expected: the compiler checks it fits.
const tracer = provider.getTracer("leasegate-test");
const contextManager = new AsyncLocalStorageContextManager();
const base = `tracing-${process.pid}-${Date.now()}`;
const pools: LocalPool<Sql>[] = [];
let seq = 0;

beforeAll(() => {
  context.setGlobalContextManager(contextManager.enable());
});

afterAll(async () => {
  for (const pool of pools) await pool.close();
  context.disable();
  const admin = postgres(TEST_URL, { max: 1, onnotice: () => {} });
  await forgetPools(admin, `${base}-%`);
  await admin.end();
});

async function traced(env: Record<string, string> = {}): Promise<LocalPool<Sql> & { pool: string }> {
  const name = `${base}-${++seq}`;
  const pool = await localPool<Sql>(
    { DATABASE_URL: TEST_URL, LEASE_POOL: name, LEASE_LIMIT: "1", LEASE_WAIT_MS: "5000", ...env },
    { driver, tracer },
  );
  pools.push(pool);
  return Object.assign(pool, { pool: name });
}

/** The finished spans of one pool, by name. */
function spansOf(pool: string): { waits: ReadableSpan[]; holds: ReadableSpan[] } {
  const mine = exporter.getFinishedSpans().filter((s) => s.attributes[ATTRIBUTES.pool] === pool);
  return { waits: mine.filter((s) => s.name === SPANS.wait), holds: mine.filter((s) => s.name === SPANS.hold) };
}

const ERROR = 2;

describe("lease spans", () => {
  it("an immediate grant: a wait span and a hold span with pool, fence, wait and outcome; queries nest under the hold", async () => {
    const p = await traced();
    let inner: string | undefined;
    const rows = await p.sql(async (sql) => {
      inner = trace.getActiveSpan()?.spanContext().spanId;
      return await sql`SELECT 1 AS one`;
    });
    expect(rows[0]).toEqual({ one: 1 });
    await expect.poll(() => spansOf(p.pool).holds.length).toBe(1);
    const { waits, holds } = spansOf(p.pool);
    expect(waits).toHaveLength(1);
    const [wait, hold] = [waits[0]!, holds[0]!];
    expect(wait.attributes).toMatchObject({ [ATTRIBUTES.pool]: p.pool, [ATTRIBUTES.outcome]: "granted" });
    expect(wait.attributes[ATTRIBUTES.fence]).toBeGreaterThan(0);
    expect(wait.attributes[ATTRIBUTES.waitMs]).toBeGreaterThanOrEqual(0);
    expect(wait.attributes[ATTRIBUTES.position]).toBe(0);
    expect(hold.attributes).toMatchObject({
      [ATTRIBUTES.pool]: p.pool,
      [ATTRIBUTES.fence]: wait.attributes[ATTRIBUTES.fence],
      [ATTRIBUTES.outcome]: "released",
    });
    expect(hold.status.code).not.toBe(ERROR);
    // The work ran with the hold span active: the application's spans nest under it.
    expect(inner).toBe(hold.spanContext().spanId);
    // The hold ends once the slot is back, after the wait ended.
    expect(hold.startTime[0] * 1e9 + hold.startTime[1]).toBeGreaterThanOrEqual(
      wait.endTime[0] * 1e9 + wait.endTime[1] - 1e6,
    );
  });

  it("a queued grant: the wait span says how long it waited and its place in the queue", async () => {
    const p = await traced();
    const leases = p.leases as Leases;
    const first = await leases.acquire();
    const queued = leases.withLease(() => "done");
    await expect.poll(async () => (await leases.stats()).waiting).toBe(1);
    await new Promise((r) => setTimeout(r, 100));
    await leases.release(first);
    expect(await queued).toBe("done");
    await expect.poll(() => spansOf(p.pool).holds.length).toBe(1);
    const wait = spansOf(p.pool).waits[0]!;
    expect(wait.attributes[ATTRIBUTES.outcome]).toBe("granted");
    expect(wait.attributes[ATTRIBUTES.waitMs]).toBeGreaterThanOrEqual(100);
    expect(wait.attributes[ATTRIBUTES.position]).toBe(1);
    expect(wait.attributes[ATTRIBUTES.fence]).toBeGreaterThan(first.fence);
  });

  it("a shed: the wait span ends in error with QUEUE_FULL and its retry-after, and no hold span", async () => {
    const p = await traced({ LEASE_MAX_QUEUE: "0" });
    const leases = p.leases as Leases;
    const first = await leases.acquire();
    const shed = await leases.withLease(() => "ran").catch((e: unknown) => e);
    expect(shed).toBeInstanceOf(LeaseError);
    expect((shed as LeaseError).code).toBe("QUEUE_FULL");
    await leases.release(first);
    const { waits, holds } = spansOf(p.pool);
    expect(holds).toHaveLength(0);
    expect(waits).toHaveLength(1);
    expect(waits[0]!.attributes).toMatchObject({ [ATTRIBUTES.outcome]: "QUEUE_FULL" });
    expect(waits[0]!.attributes[ATTRIBUTES.retryAfterMs]).toBeGreaterThanOrEqual(0);
    expect(waits[0]!.status).toMatchObject({ code: ERROR, message: "QUEUE_FULL" });
  });

  it("a lost lease: the hold span carries a lease_lost event and ends in error with LEASE_LOST", async () => {
    const p = await traced({ LEASE_TTL_MS: "600" });
    const leases = p.leases as Leases;
    const outcome = await leases
      .withLease(async ({ lease, signal }) => {
        await p.operator!.revoke(lease.id.slice(0, 8));
        // The next renewal (a third of the TTL) is refused: the scope's signal aborts.
        await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
        return (signal.reason as LeaseError).code;
      })
      .catch((e: unknown) => e);
    expect(outcome).toBe("LEASE_LOST");
    await expect.poll(() => spansOf(p.pool).holds.length).toBe(1);
    const hold = spansOf(p.pool).holds[0]!;
    expect(hold.attributes[ATTRIBUTES.outcome]).toBe("LEASE_LOST");
    expect(hold.status).toMatchObject({ code: ERROR, message: "LEASE_LOST" });
    expect(hold.events.map((e) => e.name)).toEqual([SPANS.lost]);
  });

  it("without a tracer nothing is recorded", async () => {
    const name = `${base}-${++seq}`;
    const pool = await localPool<Sql>({ DATABASE_URL: TEST_URL, LEASE_POOL: name, LEASE_LIMIT: "1" }, { driver });
    pools.push(pool);
    await pool.sql((sql) => sql`SELECT 1`);
    expect(spansOf(name).waits).toHaveLength(0);
  });
});

/** A reader the test collects from when it asks (no export timer). */
class OnDemandReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

describe("lease metrics", () => {
  it("reports the pool's stats through an OpenTelemetry meter, with the pool as attribute", async () => {
    const p = await traced({ LEASE_LIMIT: "3" });
    const reader = new OnDemandReader();
    // OpenTelemetry's `Meter`, passed where leasegate's structural `LeaseMeter` is expected.
    const meter = new MeterProvider({ readers: [reader] }).getMeter("leasegate-test");
    leaseMetrics(meter, [p.leases!]);
    const leases = p.leases as Leases;
    await leases.withLease(() => "first");
    const held = await leases.acquire();
    const { resourceMetrics, errors } = await reader.collect();
    await leases.release(held);
    expect(errors).toEqual([]);
    const points = new Map(
      resourceMetrics.scopeMetrics
        .flatMap((s) => s.metrics)
        .map((m) => [m.descriptor.name, m.dataPoints.find((d) => d.attributes[ATTRIBUTES.pool] === p.pool)?.value]),
    );
    expect(Object.fromEntries(points)).toMatchObject({
      "leasegate.limit": 3,
      "leasegate.held": 1,
      "leasegate.waiting": 0,
      "leasegate.granted": 2,
      "leasegate.released": 1,
      "leasegate.rejected": 0,
    });
  });
});

describe("OpenTelemetry is optional", () => {
  it("no package entry's module graph loads @opentelemetry: the tracer is the application's", async () => {
    const { build } = await import("esbuild");
    const entries = ["src/index.ts", "src/workers.ts", "local/index.ts", "src/http/index.ts", "src/hono.ts"];
    const result = await build({
      entryPoints: entries,
      bundle: true,
      write: false,
      metafile: true,
      outdir: "/tmp/leasegate-graph",
      format: "esm",
      platform: "node",
      conditions: ["source"],
      // The drivers and the platform are the application's; everything of leasegate is followed.
      external: ["postgres", "pg", "@neondatabase/serverless", "hono", "hono/*", "cloudflare:*", "node:*"],
      logLevel: "silent",
    });
    const inputs = Object.keys(result.metafile.inputs);
    // The graph holds the tracing module itself, so a value import of OpenTelemetry there would show.
    expect(inputs).toContain("src/tracing.ts");
    expect(inputs.filter((path) => path.includes("@opentelemetry"))).toEqual([]);
  });
});
