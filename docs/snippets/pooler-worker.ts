// worker.ts: a Worker whose Hyperdrive runs in transaction mode in production (wrangler.toml
// [vars]: DB_POOLER = "transaction", LEASE_LIMIT = "20": at most Hyperdrive's origin connections)
import { trace } from "@opentelemetry/api";
import { driver } from "leasegate/pg";
import { type WorkerPoolEnv, workerPool } from "leasegate/workers";

export { ConnectionCoordinator } from "leasegate/workers";

export default {
  async fetch(request: Request, env: WorkerPoolEnv, ctx: ExecutionContext): Promise<Response> {
    const pool = workerPool(env, ctx, { driver, tracer: trace.getTracer("my-worker") });
    const rows = await pool.db.query("SELECT now() AS now", [], { holder: request.url });
    return Response.json(rows);
  },
} satisfies ExportedHandler<WorkerPoolEnv>;
