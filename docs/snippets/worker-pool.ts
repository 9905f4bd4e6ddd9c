// src/index.ts: a Worker with the database layer, /health and the operator endpoints
import { errorResponse, healthResponse, operatorHandler } from "leasegate/http";
import { driver } from "leasegate/postgres";
import { ConnectionCoordinator, type WorkerPoolEnv, workerPool } from "leasegate/workers";
export { ConnectionCoordinator };

interface Env extends WorkerPoolEnv {
  DEBUG_TOKEN?: string;
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    try {
      const pool = workerPool(env, ctx, { driver });
      const operator = operatorHandler({
        controls: pool.operator,
        token: env.DEBUG_TOKEN,
        status: () => pool.db.status(),
      });
      const answered = await operator(request);
      if (answered) return answered;
      if (new URL(request.url).pathname === "/health") {
        const { leases } = pool;
        return healthResponse({
          database: () => pool.db.query("SELECT 1"),
          coordinator: leases && (() => leases.stats()),
        });
      }
      // One lease, one connection, retries of retryable failures within the deadline.
      const rows = await pool.sql((sql) => sql`SELECT now() AS now`, { holder: request.url });
      const [{ n }] = (await pool.db.query("SELECT count(*)::int AS n FROM pg_stat_activity")) as [{ n: number }];
      return Response.json({ rows, connections: n });
    } catch (error) {
      // QUEUE_FULL / ACQUIRE_TIMEOUT / DATABASE_UNAVAILABLE → 503 + Retry-After; bad config → 500.
      return errorResponse(error);
    }
  },
} satisfies ExportedHandler<Env>;
