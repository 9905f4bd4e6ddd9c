// src/prisma-worker.ts: a Worker on Prisma 7 and node-postgres through Hyperdrive, every query under a lease
import { LeaseError } from "leasegate";
import { errorResponse } from "leasegate/http";
import { driver } from "leasegate/pg";
import { leaseErrorOf, leasedAdapter } from "leasegate/prisma";
import { ConnectionCoordinator, type WorkerPoolEnv, workerPool } from "leasegate/workers";
import { PrismaClient } from "./generated/workerd/client.ts";

// The coordinator Durable Object lives in this Worker (wrangler.prisma.toml binds it as COORDINATOR_DO).
export { ConnectionCoordinator };

export default {
  async fetch(request, env, ctx): Promise<Response> {
    try {
      // Per request, like the pool: each query is one lease; an interactive transaction holds one throughout.
      const prisma = new PrismaClient({
        adapter: leasedAdapter(workerPool(env, ctx, { driver }), { holder: "prisma-worker" }),
      });
      const url = new URL(request.url);
      if (url.pathname === "/notes" && request.method === "GET") {
        const notes = await prisma.note.findMany({
          select: { id: true, body: true },
          orderBy: { id: "desc" },
          take: 50,
        });
        return Response.json(notes);
      }
      if (url.pathname === "/notes" && request.method === "POST") {
        const { body } = (await request.json()) as { body?: unknown };
        if (typeof body !== "string" || body.length > 500)
          throw new LeaseError("INVALID_ARGUMENT", "`body` must be a string of at most 500 characters");
        const note = await prisma.$transaction((tx) =>
          tx.note.create({ data: { body }, select: { id: true, body: true } }),
        );
        return Response.json(note, { status: 201 });
      }
      return Response.json({ error: { code: "NOT_FOUND", message: "No such route" } }, { status: 404 });
    } catch (error) {
      // Prisma wraps leasegate's errors: `leaseErrorOf` finds them, so overload answers 503 + Retry-After.
      return errorResponse(leaseErrorOf(error) ?? error);
    }
  },
} satisfies ExportedHandler<WorkerPoolEnv>;
