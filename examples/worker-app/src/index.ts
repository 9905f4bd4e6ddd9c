import { errorResponse } from "leasegate/http";
import { driver } from "leasegate/postgres";
import { type WorkerPoolEnv, workerPool } from "leasegate/workers";

// The coordinator Durable Object lives in another Worker (coordinator/); wrangler.toml binds it by script name.
export default {
  async fetch(_request, env, ctx): Promise<Response> {
    try {
      const [row] = await workerPool(env, ctx, { driver }).sql((sql) => sql`SELECT 41 + 1 AS answer`);
      return Response.json(row);
    } catch (error) {
      return errorResponse(error);
    }
  },
} satisfies ExportedHandler<WorkerPoolEnv>;
