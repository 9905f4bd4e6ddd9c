import { isLeaseError, leasedQuery } from "leasegate/workers";

interface Env {
  COORDINATOR: DurableObjectNamespace<import("leasegate/workers").ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

export default {
  async fetch(_request, env, ctx): Promise<Response> {
    try {
      const [row] = await leasedQuery((sql) => sql`SELECT 41 + 1 AS answer`, { coordinator: env.COORDINATOR, hyperdrive: env.HYPERDRIVE, ctx });
      return Response.json(row);
    } catch (e) {
      if (isLeaseError(e) && e.retryable) return Response.json({ error: e.code }, { status: 503, headers: { "retry-after": "1" } });
      throw e;
    }
  },
} satisfies ExportedHandler<Env>;
