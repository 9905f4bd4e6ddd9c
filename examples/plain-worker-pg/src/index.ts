// src/index.ts: a plain Worker on node-postgres (`pg`) through Hyperdrive, every query under a lease
import { LeaseError } from "leasegate";
import { errorResponse, operatorHandler } from "leasegate/http";
import { driver } from "leasegate/pg";
import { ConnectionCoordinator, type WorkerPoolEnv, reconcileOnSchedule, workerPool } from "leasegate/workers";

// The coordinator Durable Object lives in this Worker (wrangler.toml binds it as COORDINATOR_DO).
export { ConnectionCoordinator };

export interface Env extends WorkerPoolEnv {
  /** Bearer token of /__coordinator/*; unset turns those endpoints off. */
  DEBUG_TOKEN?: string;
}

interface Note {
  id: number;
  body: string;
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    try {
      // Cheap per request: settings are read once per isolate.
      const pool = workerPool(env, ctx, { driver });
      // Stats, metrics, dashboard and controls under /__coordinator/, behind DEBUG_TOKEN.
      const operator = await operatorHandler({ controls: pool.operator, token: env.DEBUG_TOKEN })(request);
      if (operator) return operator;

      const url = new URL(request.url);
      if (url.pathname === "/notes" && request.method === "GET") {
        // One lease, one connected pg.Client (typed by @types/pg), closed before the slot goes back.
        const { rows } = await pool.sql((client) =>
          client.query<Note>("SELECT id, body FROM notes ORDER BY id DESC LIMIT 50"),
        );
        return Response.json(rows);
      }
      if (url.pathname === "/notes" && request.method === "POST") {
        const { body } = (await request.json()) as { body?: unknown };
        if (typeof body !== "string" || body.length > 500)
          throw new LeaseError("INVALID_ARGUMENT", "`body` must be a string of at most 500 characters");
        // A transaction: `fn` may run again after a serialization failure, so it only touches the database.
        const [note] = await pool.db.transaction((tx) =>
          tx.query<Note>("INSERT INTO notes (body) VALUES ($1) RETURNING id, body", [body]),
        );
        return Response.json(note, { status: 201 });
      }
      return Response.json({ error: { code: "NOT_FOUND", message: "No such route" } }, { status: 404 });
    } catch (error) {
      // QUEUE_FULL / ACQUIRE_TIMEOUT / DATABASE_UNAVAILABLE → 503 + Retry-After; a failed query → 500.
      return errorResponse(error);
    }
  },
  // The cron in wrangler.toml: leases against pg_stat_activity; a failed run shows as a failed invocation.
  scheduled: reconcileOnSchedule({ driver }),
} satisfies ExportedHandler<Env>;
