// src/index.ts: the smallest Worker that queries Postgres under leases
import { errorResponse } from "leasegate/http";
import { driver } from "leasegate/postgres";
import { ConnectionCoordinator, type WorkerPoolEnv, reconcileOnSchedule, workerPool } from "leasegate/workers";
export { ConnectionCoordinator };

export default {
  async fetch(_request, env, ctx): Promise<Response> {
    try {
      const rows = await workerPool(env, ctx, { driver }).sql((sql) => sql`SELECT now()`);
      return Response.json(rows);
    } catch (error) {
      return errorResponse(error); // QUEUE_FULL, ACQUIRE_TIMEOUT → 503 + Retry-After
    }
  },
  scheduled: reconcileOnSchedule({ driver }),
} satisfies ExportedHandler<WorkerPoolEnv>;
