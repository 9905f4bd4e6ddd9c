// src/kysely-worker.ts: a Worker on Kysely and node-postgres through Hyperdrive, every connection under a lease
import { Kysely } from "kysely";
import { LeaseError } from "leasegate";
import { errorResponse } from "leasegate/http";
import { LeasedDialect } from "leasegate/kysely";
import { driver } from "leasegate/pg";
import { ConnectionCoordinator, type WorkerPoolEnv, workerPool } from "leasegate/workers";
import type { Database } from "./schema.ts";

// The coordinator Durable Object lives in this Worker (wrangler.kysely.toml binds it as COORDINATOR_DO).
export { ConnectionCoordinator };

export default {
  async fetch(request, env, ctx): Promise<Response> {
    try {
      // Per request, like the pool: each connection Kysely takes is one lease, closed before the slot goes back.
      const pool = workerPool(env, ctx, { driver });
      const db = new Kysely<Database>({ dialect: new LeasedDialect({ pool, holder: "kysely-worker" }) });
      const url = new URL(request.url);
      if (url.pathname === "/notes" && request.method === "GET") {
        const notes = await db.selectFrom("orm_notes").select(["id", "body"]).orderBy("id", "desc").limit(50).execute();
        return Response.json(notes);
      }
      if (url.pathname === "/notes" && request.method === "POST") {
        const { body } = (await request.json()) as { body?: unknown };
        if (typeof body !== "string" || body.length > 500)
          throw new LeaseError("INVALID_ARGUMENT", "`body` must be a string of at most 500 characters");
        // A transaction holds one lease and one connection from BEGIN to COMMIT.
        const note = await db
          .transaction()
          .execute((trx) =>
            trx.insertInto("orm_notes").values({ body }).returning(["id", "body"]).executeTakeFirstOrThrow(),
          );
        return Response.json(note, { status: 201 });
      }
      return Response.json({ error: { code: "NOT_FOUND", message: "No such route" } }, { status: 404 });
    } catch (error) {
      // QUEUE_FULL / ACQUIRE_TIMEOUT / DATABASE_UNAVAILABLE → 503 + Retry-After; a failed query → 500.
      return errorResponse(error);
    }
  },
} satisfies ExportedHandler<WorkerPoolEnv>;
