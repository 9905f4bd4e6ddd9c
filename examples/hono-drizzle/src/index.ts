// src/index.ts: a notes API on Hono, Drizzle and node-postgres through Hyperdrive, every query under a lease
import { desc } from "drizzle-orm";
import { type NodePgDatabase, drizzle } from "drizzle-orm/node-postgres";
import { pgTable, serial, text, timestamp } from "drizzle-orm/pg-core";
import { Hono } from "hono";
import { type LeasedClient, leased } from "leasegate/hono";
import { errorResponse, healthResponse, operatorHandler, readJson } from "leasegate/http";
import { LeaseError, Leases } from "leasegate";
import { driver } from "leasegate/pg";
import { ConnectionCoordinator, type WorkerPoolEnv, workerPool } from "leasegate/workers";
import type pg from "pg";

// The coordinator Durable Object lives in this Worker (wrangler.toml binds it as COORDINATOR_DO).
export { ConnectionCoordinator };

export interface Env extends WorkerPoolEnv {
  /** Bearer token of /__coordinator/*; unset turns those endpoints off. */
  DEBUG_TOKEN?: string;
}

export const notes = pgTable("notes", {
  id: serial("id").primaryKey(),
  body: text("body").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

type AppEnv = {
  Bindings: Env;
  Variables: { client: LeasedClient<pg.Client>; db: () => Promise<NodePgDatabase> };
};

const app = new Hono<AppEnv>();

// Every failure answers {"error": {"code", "message"}}; overload (QUEUE_FULL, ACQUIRE_TIMEOUT) 503 + Retry-After.
app.onError((error) => errorResponse(error));

// The operator endpoints (stats, metrics, dashboard, controls) behind DEBUG_TOKEN.
app.use("/__coordinator/*", async (c, next) => {
  const pool = workerPool(c.env, c.executionCtx, { driver });
  const answer = await operatorHandler({
    controls: pool.operator,
    token: c.env.DEBUG_TOKEN,
    status: () => pool.db.status(),
  })(c.req.raw);
  return answer ?? next();
});

app.get("/health", (c) => {
  const { db, leases } = workerPool(c.env, c.executionCtx, { driver });
  return healthResponse({
    database: () => db.query("SELECT 1", [], { waitMs: 1000 }),
    coordinator: leases && (() => leases.stats()),
    status: () => db.status(),
  });
});

// One lease and one pg Client per request, taken on first use, closed and released when the request ends.
app.use(
  "/notes/*",
  leased({
    leases: (c) => new Leases(c.env.COORDINATOR_DO.getByName(c.env.LEASE_POOL || "main")),
    driver,
    connectionString: (c) => c.env.HYPERDRIVE.connectionString,
  }),
);
// A Drizzle client per request, on that request's connection.
app.use("/notes/*", async (c, next) => {
  c.set("db", async () => drizzle({ client: await c.var.client() }));
  await next();
});

app.get("/notes", async (c) => {
  const db = await c.var.db();
  return c.json(await db.select().from(notes).orderBy(desc(notes.id)).limit(50));
});

app.post("/notes", async (c) => {
  const body = noteBody((await readJson(c.req.raw)).body);
  const db = await c.var.db();
  const [note] = await db.insert(notes).values({ body }).returning();
  return c.json(note, 201);
});

// Two notes in one transaction: both or neither. `fail: true` throws after the first insert.
app.post("/notes/pair", async (c) => {
  const input = await readJson(c.req.raw);
  const [first, second] = [noteBody(input.first), noteBody(input.second)];
  const db = await c.var.db();
  const pair = await db.transaction(async (tx) => {
    const [a] = await tx.insert(notes).values({ body: first }).returning();
    if (input.fail === true) throw new Error("failed between the two inserts");
    const [b] = await tx.insert(notes).values({ body: second }).returning();
    return [a, b];
  });
  return c.json(pair, 201);
});

// A slow report through the database layer: a read, so safe to run twice (`idempotent`) — a
// backend that dies under it (57P01, a reset) is retried on a fresh connection and a new lease
// within DB_DEADLINE_MS.
app.get("/report", async (c) => {
  const { db } = workerPool(c.env, c.executionCtx, { driver });
  const [row] = await db.query(
    "SELECT count(*)::int AS notes, pg_backend_pid() AS backend FROM notes, pg_sleep(1)",
    [],
    { holder: "GET /report", idempotent: true },
  );
  return c.json(row);
});

function noteBody(value: unknown): string {
  if (typeof value !== "string" || value.trim() === "" || value.length > 1000) {
    throw new LeaseError("INVALID_ARGUMENT", "Expected a note body of 1 to 1000 characters");
  }
  return value;
}

export default app;
