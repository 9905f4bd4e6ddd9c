/**
 * Traces and metrics through OpenTelemetry, when the application has it. leasegate imports nothing
 * of `@opentelemetry/api`: the application passes its own tracer (`trace.getTracer("my-app")`) or
 * meter, and what is declared here is the part of them leasegate calls — so an application
 * without OpenTelemetry loads and pays nothing, and a Worker bundles nothing of it.
 *
 * Spans (docs/tracing.md): `leasegate.wait` from the acquire to its answer, then `leasegate.hold`
 * from the grant until the slot is given back (the connection closed first), active while the work
 * runs so the work's own spans (queries) nest under it.
 */
import type { LeaseGrant } from "./core/protocol.ts";
import type { PoolStats } from "./core/types.ts";

/** An attribute value as OpenTelemetry takes it. */
export type TraceValue = string | number | boolean;

/** The part of an OpenTelemetry `Span` leasegate calls. */
export interface LeaseSpan {
  setAttribute(key: string, value: TraceValue): unknown;
  addEvent(name: string, attributes?: Record<string, TraceValue>): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}

/**
 * The part of an OpenTelemetry `Tracer` leasegate calls: pass `trace.getTracer("my-app")` as the
 * `tracer` of `Leases`, `ShardedLeases`, `workerPool` or `localPool`.
 *
 * @example
 * import { trace } from "@opentelemetry/api";
 * const pool = await localPool(process.env, { driver, tracer: trace.getTracer("my-app") });
 */
export interface LeaseTracer {
  startSpan(name: string, options?: { attributes?: Record<string, TraceValue> }): LeaseSpan;
  startActiveSpan<F extends (span: LeaseSpan) => unknown>(
    name: string,
    options: { attributes?: Record<string, TraceValue> },
    fn: F,
  ): ReturnType<F>;
}

/** OpenTelemetry's `SpanStatusCode.ERROR` (stable since 1.0): the value, without importing the enum. */
const ERROR = 2;

/** The span and attribute names, declared once (docs/tracing.md lists them). */
export const SPANS = { wait: "leasegate.wait", hold: "leasegate.hold", lost: "leasegate.lease_lost" } as const;
export const ATTRIBUTES = {
  pool: "leasegate.pool",
  shard: "leasegate.shard",
  fence: "leasegate.fence",
  lease: "leasegate.lease_id",
  waitMs: "leasegate.wait_ms",
  position: "leasegate.queue_position",
  outcome: "leasegate.outcome",
  retryAfterMs: "leasegate.retry_after_ms",
} as const;

/** What the lease lifecycle tells a trace: one per `holdLease`. */
export interface LeaseWatch {
  /** The acquire answered with `lease`. */
  granted(lease: LeaseGrant): void;
  /** The acquire failed (shed, timed out, coordinator away, caller gave up). */
  refused(error: unknown): void;
  /** Runs the work with the hold span active. */
  hold<T>(work: () => T): T;
  /** The lease ended while the work ran. */
  lost(error: unknown): void;
  /** The slot was given back (or left to its expiry). */
  done(): void;
}

/** A lease grant as a trace shows it; the shard of a sharded pool's grant, the queue position when the coordinator said. */
function leaseAttributes(lease: LeaseGrant): Record<string, TraceValue> {
  const attributes: Record<string, TraceValue> = {
    [ATTRIBUTES.fence]: lease.fence,
    // The prefix operators see (stats, dashboard): enough to find it, not enough to release it.
    [ATTRIBUTES.lease]: lease.id.slice(0, 8),
  };
  const { shard, queuePosition } = lease as { shard?: unknown; queuePosition?: unknown };
  if (typeof shard === "number") attributes[ATTRIBUTES.shard] = shard;
  if (typeof queuePosition === "number") attributes[ATTRIBUTES.position] = queuePosition;
  return attributes;
}

function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return (error as { name?: unknown } | null)?.name === "AbortError" ? "ABORTED" : "ERROR";
}

/**
 * The watch of one lease lifecycle, or undefined without a tracer (the lifecycle then calls
 * nothing). `now` is the holder's clock, ms.
 *
 * @example
 * const watch = watchLease(client.tracer, "main", () => performance.now());
 */
export function watchLease(tracer: LeaseTracer | undefined, pool: string, now: () => number): LeaseWatch | undefined {
  if (!tracer) return undefined;
  const startedAt = now();
  const wait = tracer.startSpan(SPANS.wait, { attributes: { [ATTRIBUTES.pool]: pool } });
  let attributes: Record<string, TraceValue> = { [ATTRIBUTES.pool]: pool };
  let held: LeaseSpan | undefined;
  let lost = false;
  return {
    granted(lease) {
      const waitMs = Math.round(now() - startedAt);
      attributes = { ...attributes, ...leaseAttributes(lease), [ATTRIBUTES.waitMs]: waitMs };
      for (const [key, value] of Object.entries(attributes)) wait.setAttribute(key, value);
      wait.setAttribute(ATTRIBUTES.outcome, "granted");
      wait.end();
    },
    refused(error) {
      const code = codeOf(error);
      wait.setAttribute(ATTRIBUTES.waitMs, Math.round(now() - startedAt));
      wait.setAttribute(ATTRIBUTES.outcome, code);
      const retryAfterMs = (error as { retryAfterMs?: unknown } | null)?.retryAfterMs;
      if (typeof retryAfterMs === "number") wait.setAttribute(ATTRIBUTES.retryAfterMs, retryAfterMs);
      wait.setStatus({ code: ERROR, message: code });
      wait.end();
    },
    hold(work) {
      return tracer.startActiveSpan(SPANS.hold, { attributes }, (span) => {
        held = span;
        return work();
      });
    },
    lost(error) {
      if (!held || lost) return;
      lost = true;
      const code = codeOf(error);
      held.addEvent(SPANS.lost, { [ATTRIBUTES.outcome]: code });
      held.setAttribute(ATTRIBUTES.outcome, code);
      held.setStatus({ code: ERROR, message: code });
    },
    done() {
      if (!held) return;
      if (!lost) held.setAttribute(ATTRIBUTES.outcome, "released");
      held.end();
      held = undefined;
    },
  };
}

/** An instrument OpenTelemetry's meter made, passed back to it as is. */
export type LeaseInstrument = object;

/** The part of an OpenTelemetry `Meter` leasegate calls: pass `metrics.getMeter("my-app")`. */
export interface LeaseMeter {
  createObservableGauge(name: string, options?: { description?: string; unit?: string }): LeaseInstrument;
  createObservableCounter(name: string, options?: { description?: string; unit?: string }): LeaseInstrument;
  addBatchObservableCallback(
    callback: (observer: {
      observe(instrument: never, value: number, attributes?: Record<string, TraceValue>): void;
    }) => Promise<void> | void,
    instruments: never[],
  ): void;
}

/** The pool stats a metric reads, by the instrument's name: the same figures `/__coordinator/metrics` exposes. */
const GAUGES = [
  ["leasegate.limit", "{lease}", "Slots in the pool: leases that may be held at once.", (s) => s.limit],
  ["leasegate.held", "{lease}", "Leases held now.", (s) => s.held],
  ["leasegate.waiting", "{request}", "Callers queued for a slot now.", (s) => s.waiting],
  ["leasegate.oldest_wait", "s", "Age of the oldest queued caller (0 when none waits).", (s) => s.maxWaitMs / 1000],
  ["leasegate.paused", "1", "1 while an operator has paused granting (drain), else 0.", (s) => (s.paused ? 1 : 0)],
] as const satisfies ReadonlyArray<readonly [string, string, string, (s: PoolStats) => number]>;
const COUNTERS = [
  ["leasegate.granted", "{lease}", "Leases granted.", (s) => s.counters.granted],
  [
    "leasegate.released",
    "{lease}",
    "Leases released by their holders (or by an operator).",
    (s) => s.counters.released,
  ],
  [
    "leasegate.expired",
    "{lease}",
    "Leases reaped: their holder neither released nor renewed them.",
    (s) => s.counters.expired,
  ],
  ["leasegate.timed_out", "{request}", "Acquires that failed with ACQUIRE_TIMEOUT.", (s) => s.counters.timedOut],
  ["leasegate.rejected", "{request}", "Acquires shed at once with QUEUE_FULL.", (s) => s.counters.rejected],
  ["leasegate.cancelled", "{request}", "Queued acquires whose caller gave up.", (s) => s.counters.cancelled],
] as const satisfies ReadonlyArray<readonly [string, string, string, (s: PoolStats) => number]>;

/**
 * Reports pools' stats as OpenTelemetry metrics (gauges and counters, each with `leasegate.pool`),
 * read once per collection with one `stats()` call per pool. A pool whose stats cannot be read
 * then reports nothing for that collection. For Node and Deno (`localPool`); a Worker's
 * coordinator is read by its Prometheus endpoint (`/__coordinator/metrics`).
 *
 * @example
 * import { metrics } from "@opentelemetry/api";
 * leaseMetrics(metrics.getMeter("my-app"), [pool.leases!]);
 */
export function leaseMetrics(
  meter: LeaseMeter,
  pools: ReadonlyArray<{ readonly pool?: string | undefined; stats(): Promise<PoolStats> }>,
): void {
  const gauges = GAUGES.map(([name, unit, description, read]) => ({
    instrument: meter.createObservableGauge(name, { unit, description }),
    read,
  }));
  const counters = COUNTERS.map(([name, unit, description, read]) => ({
    instrument: meter.createObservableCounter(name, { unit, description }),
    read,
  }));
  const all = [...gauges, ...counters];
  meter.addBatchObservableCallback(
    async (observer) => {
      const read = await Promise.all(pools.map((p) => p.stats().catch(() => undefined)));
      read.forEach((stats, i) => {
        if (!stats) return;
        const attributes = { [ATTRIBUTES.pool]: pools[i]!.pool ?? "" };
        for (const { instrument, read } of all) observer.observe(instrument as never, read(stats), attributes);
      });
    },
    all.map((x) => x.instrument as never),
  );
}
