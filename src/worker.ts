import type { Sql } from "postgres";
import { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
import { type LeaseClient, Leases } from "./client/leases.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards, mergeStats, shardName } from "./client/sharded-leases.ts";
import {
  type ControlResult,
  type PoolEnv,
  compareConnections,
  configFromEnv,
  expected,
  intFromEnv,
  shardLimits as shardLimitsOf,
} from "./core/index.ts";
import { closeConnection, connectFromWorker } from "./db/hyperdrive.ts";
import { CircuitBreaker } from "./db/circuit-breaker.ts";
import { type DatabaseConfig, type DatabaseEnv, databaseConfig } from "./db/config.ts";
import { openDriver } from "./db/connect.ts";
import { Database } from "./db/database.ts";
import { toDatabaseError } from "./db/errors.ts";
import { countConnections } from "./db/reconcile.ts";
import { SafeMode } from "./db/safe-mode.ts";
import { type AppDeps, type OperatorControls, type WithDatabase, handle } from "./http/app.ts";
import { errorResponse } from "./http/respond.ts";

export { ConnectionCoordinator };

export interface Env extends PoolEnv, DatabaseEnv {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string;
  DEBUG_TOKEN?: string;
  /** Pool name: one coordinator object per name. */
  LEASE_POOL?: string;
  /** `application_name` of the Worker's connections, to find them in `pg_stat_activity`. */
  APPLICATION_NAME?: string;
  /** Coordinator objects the pool's limit is split across (`${pool}#${i}`); 1 = one object named `${pool}`. */
  LEASE_SHARDS?: string;
  /** Leases an isolate may keep and hand to its own requests (batching); 0 = off. */
  LEASE_BLOCK?: string;
  /** How long a batched lease may idle in an isolate before it goes back, ms. */
  LEASE_BLOCK_IDLE_MS?: string;
  /** Where coordinator objects are created (`locationHint`, e.g. `weur`): near the database. */
  LEASE_LOCATION_HINT?: string;
}

// Per isolate, per pool: the breaker and the safe-mode budget outlive a request, so that one
// request's failures spare the next ones the wait.
const isolate = new Map<string, { breaker: CircuitBreaker; safeMode: SafeMode }>();
// Validated once per env object (once per isolate in production), not on every request.
const configs = new WeakMap<Env, DatabaseConfig>();
// Per isolate, per pool and split: the shards' last loads and the lease block (batching).
const shardStates = new Map<string, IsolateShards>();

/** The isolate's state for this env's pool, or undefined for one object without batching (today's path). */
function shardStateFor(env: Env, pool: string): IsolateShards | undefined {
  const shards = intFromEnv("LEASE_SHARDS", env.LEASE_SHARDS, 1);
  const maxBlock = intFromEnv("LEASE_BLOCK", env.LEASE_BLOCK, 0);
  const idleMs = intFromEnv("LEASE_BLOCK_IDLE_MS", env.LEASE_BLOCK_IDLE_MS, 20);
  if (shards === 1 && maxBlock === 0) return undefined;
  const limit = configFromEnv(env).limit;
  const key = `${pool}|${shards}|${limit}|${maxBlock}|${idleMs}`;
  let state = shardStates.get(key);
  if (!state) {
    state = createIsolateShards({ shards, limit, maxBlock, idleMs });
    shardStates.set(key, state);
  }
  return state;
}

/** A coordinator object, created near the database when `LEASE_LOCATION_HINT` is set. */
function coordinatorStub(env: Env, name: string): DurableObjectStub<ConnectionCoordinator> {
  const hint = env.LEASE_LOCATION_HINT?.trim();
  const id = env.COORDINATOR_DO.idFromName(name);
  return hint ? env.COORDINATOR_DO.get(id, { locationHint: hint as DurableObjectLocationHint }) : env.COORDINATOR_DO.get(id);
}

/** Where a request's time went, for its `Server-Timing` header: waiting for a lease, and the query. */
export interface RequestTiming {
  leaseMs?: number;
  dbMs?: number;
}

/**
 * The Worker's wiring of the example app: leases from the pool's coordinator, connections through
 * Hyperdrive. Exported so tests can drive `handle` with the real wiring on a pool of their own.
 *
 * @example
 * handle(request, depsFor({ ...env, LEASE_POOL: "fuzz" }, ctx))
 * // `timing` (optional) receives the request's lease wait and query time.
 */
export function depsFor(env: Env, ctx: ExecutionContext, timing: RequestTiming = {}): AppDeps {
  const pool = env.LEASE_POOL || "main";
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const config = configs.get(env) ?? databaseConfig(env);
  configs.set(env, config);
  let kept = isolate.get(pool);
  if (!kept) {
    kept = { breaker: new CircuitBreaker(pool, config.breaker), safeMode: new SafeMode(config.safeMode) };
    isolate.set(pool, kept);
  }
  const off = env.COORDINATOR === "off";
  const sharded = off ? undefined : shardStateFor(env, pool);
  const coordinator = off || sharded ? undefined : coordinatorStub(env, pool);
  const shardStubs = sharded ? Array.from({ length: sharded.count }, (_, i) => coordinatorStub(env, shardName(pool, i, sharded.count))) : [];
  const leases: LeaseClient | undefined = sharded
    ? new ShardedLeases({
        coordinators: shardStubs,
        isolate: sharded,
        waitMs: configFromEnv(env).waitMs,
        waitUntil,
        reconnect: (i) => coordinatorStub(env, shardName(pool, i, sharded.count)),
      })
    : coordinator && new Leases(coordinator);
  const db = new Database({ name: pool, driver: openDriver(config), leases, config, ...kept, waitUntil });
  const withDatabase: WithDatabase = (fn, { holder, waitMs }) => {
    const asked = Date.now();
    return db.run(
      async ({ beforeRelease }) => {
        // Under the lease now (the last attempt's, when a retry took a new one).
        const leased = Date.now();
        timing.leaseMs = leased - asked;
        const sql: Sql = connectFromWorker(config.connectionString, config.applicationName);
        beforeRelease(() => closeConnection(sql));
        try {
          return await db.timed(holder, () => fn(sql), holder);
        } finally {
          timing.dbMs = Date.now() - leased;
        }
      },
      { holder, waitMs },
    );
  };
  return {
    withDatabase,
    stats: leases && (() => leases.stats()),
    debugToken: env.DEBUG_TOKEN,
    pool,
    operator: sharded ? shardedOperatorFor(env, shardStubs) : coordinator && operatorFor(env, coordinator),
    status: () => db.status(),
  };
}

// A Worker's main module may export only handlers and classes: these helpers stay private.

/** `application_name` of the reconciliation's own connection (it never counts itself). */
const OBSERVER_APPLICATION_NAME = "leasegate-reconcile";

/**
 * Reads `pg_stat_activity` through one short-lived connection outside any lease (an observer must
 * not wait behind the pool it observes) and lets the coordinator compare it with its leases.
 */
async function reconcileNow(env: Env, coordinator: DurableObjectStub<ConnectionCoordinator>) {
  const sql = connectFromWorker(env.HYPERDRIVE.connectionString, OBSERVER_APPLICATION_NAME);
  try {
    const counts = await countConnections(sql, env.APPLICATION_NAME || "leasegate");
    return await coordinator.reconcile(counts);
  } catch (error) {
    throw toDatabaseError(error);
  } finally {
    await closeConnection(sql);
  }
}

function operatorFor(env: Env, coordinator: DurableObjectStub<ConnectionCoordinator>): OperatorControls {
  return {
    stats: () => coordinator.operatorStats(),
    pause: () => coordinator.pause(),
    resume: () => coordinator.resume(),
    setLimit: (limit) => coordinator.setLimit(limit),
    revoke: (id) => coordinator.revoke(id),
    reconcile: () => reconcileNow(env, coordinator),
  };
}

/**
 * Operator controls over every shard: pause and resume all, split a new limit like LEASE_LIMIT
 * (`null`: each back to its part), revoke on the shard that holds the lease, stats summed. The
 * reconciliation compares the summed held leases and is not kept in the objects.
 */
function shardedOperatorFor(env: Env, stubs: Array<DurableObjectStub<ConnectionCoordinator>>): OperatorControls {
  const all = async (fn: (s: DurableObjectStub<ConnectionCoordinator>, i: number) => Promise<ControlResult>): Promise<ControlResult> => {
    const results = await Promise.all(stubs.map(fn));
    const failed = results.find((r) => !r.ok);
    if (failed) return failed;
    const ok = results as Array<Extract<ControlResult, { ok: true }>>;
    const overrides = ok.map((r) => r.limitOverride);
    return {
      ok: true,
      paused: ok.some((r) => r.paused),
      limit: ok.reduce((a, r) => a + r.limit, 0),
      limitOverride: overrides.every((o) => o === null) ? null : ok.reduce((a, r) => a + (r.limitOverride ?? r.limit), 0),
    };
  };
  let last: ReturnType<typeof compareConnections> | null = null;
  return {
    stats: async () => {
      const list = await Promise.all(stubs.map((s, index) => s.operatorStats({ index, count: stubs.length })));
      const overrides = list.map((s) => s.limitOverride);
      const merged = mergeStats(list);
      return { ...merged, limitOverride: overrides.every((o) => o === null) ? null : merged.limit, reconciliation: last };
    },
    pause: () => all((s) => s.pause()),
    resume: () => all((s) => s.resume()),
    setLimit: async (limit) => {
      if (limit !== null && (!Number.isInteger(limit) || limit < stubs.length)) {
        return { ok: false, code: "INVALID_ARGUMENT", message: expected("limit", `an integer of at least ${stubs.length} (one slot per shard)`, limit) };
      }
      const parts = limit === null ? null : shardLimitsOf(limit, stubs.length);
      return all((s, i) => s.setLimit(parts === null ? null : parts[i]!));
    },
    revoke: async (id) => {
      const results = await Promise.all(stubs.map((s) => s.revoke(id)));
      return results.find((r) => r.ok) ?? results[0]!;
    },
    reconcile: async () => {
      const sql = connectFromWorker(env.HYPERDRIVE.connectionString, OBSERVER_APPLICATION_NAME);
      try {
        const counts = await countConnections(sql, env.APPLICATION_NAME || "leasegate");
        const merged = mergeStats(await Promise.all(stubs.map((s, index) => s.stats({ index, count: stubs.length }))));
        last = compareConnections({ held: merged.held, limit: merged.limit }, counts, Date.now());
        return last;
      } catch (error) {
        throw toDatabaseError(error);
      } finally {
        await closeConnection(sql);
      }
    },
  };
}

export default {
  async fetch(request, env, ctx): Promise<Response> {
    let deps: AppDeps;
    const timing: RequestTiming = {};
    try {
      deps = depsFor(env, ctx, timing);
    } catch (error) {
      // INVALID_CONFIG: the message names the variable and never echoes a password.
      return errorResponse(error);
    }
    const started = Date.now();
    const response = await handle(request, deps);
    // Time inside the Worker (workerd's clock moves with I/O), split into the lease wait and the
    // query, so load tests can tell them from each other and from time spent in front of the Worker.
    const parts = [`app;dur=${Date.now() - started}`];
    if (timing.leaseMs !== undefined) parts.push(`lease;dur=${timing.leaseMs}`);
    if (timing.dbMs !== undefined) parts.push(`db;dur=${timing.dbMs}`);
    response.headers.set("Server-Timing", parts.join(", "));
    return response;
  },
  // Periodic reconciliation (the cron in wrangler.toml); on demand: POST /__coordinator/reconcile.
  async scheduled(_controller, env, _ctx): Promise<void> {
    if (env.COORDINATOR === "off") return;
    const pool = env.LEASE_POOL || "main";
    const sharded = shardStateFor(env, pool);
    // Awaited, so a failed run (database down) shows as a failed cron invocation.
    if (sharded && sharded.count > 1) {
      const stubs = Array.from({ length: sharded.count }, (_, i) => coordinatorStub(env, shardName(pool, i, sharded.count)));
      await shardedOperatorFor(env, stubs).reconcile();
    } else await reconcileNow(env, coordinatorStub(env, pool));
  },
} satisfies ExportedHandler<Env>;
