// tracing.ts: leases in your traces and metrics, with the OpenTelemetry SDK you already set up
import { metrics, trace } from "@opentelemetry/api";
import { leaseMetrics } from "leasegate";
import { localPool } from "leasegate/local";
import { driver } from "leasegate/postgres";

// Every lease gets a `leasegate.wait` and a `leasegate.hold` span; queries run inside the hold.
const pool = await localPool(process.env, { driver, tracer: trace.getTracer("my-app") });
// The pool's gauges and counters, read once per collection.
if (pool.leases) leaseMetrics(metrics.getMeter("my-app"), [pool.leases]);

await trace.getTracer("my-app").startActiveSpan("GET /api/pitches/trending", async (span) => {
  await pool.sql((sql) => sql`SELECT now()`);
  span.end();
});
await pool.close();
