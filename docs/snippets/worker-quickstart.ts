// src/index.ts: a Worker that queries Postgres under leases
import { ConnectionCoordinator, isLeaseError, leasedQuery } from "leasegate/workers";
export { ConnectionCoordinator };

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

export default {
  async fetch(_request, env, ctx): Promise<Response> {
    try {
      const rows = await leasedQuery((sql) => sql`SELECT now()`, { coordinator: env.COORDINATOR_DO, hyperdrive: env.HYPERDRIVE, ctx });
      return Response.json(rows);
    } catch (e) {
      if (isLeaseError(e) && e.retryable) return new Response(e.code, { status: 503, headers: { "retry-after": "1" } });
      throw e;
    }
  },
} satisfies ExportedHandler<Env>;
