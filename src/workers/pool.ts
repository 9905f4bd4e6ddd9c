import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { Leases } from "../client/leases.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards, shardName } from "../client/sharded-leases.ts";
import type { PoolSettings } from "../core/index.ts";
import { CircuitBreaker } from "../db/circuit-breaker.ts";
import { type SettingsEnv, settingsFromEnv } from "../db/config.ts";
import { openDriver } from "../db/connect.ts";
import { Database } from "../db/database.ts";
import { closeConnection, connectFromWorker } from "../db/hyperdrive.ts";
import { SafeMode } from "../db/safe-mode.ts";
import { type LeasedPool, leasedSql } from "../db/pool.ts";
import { learnNow, learnWhenStale } from "./learn.ts";
import { type ReconcileTarget, coordinatorControls, shardedControls } from "./operator.ts";

/** The bindings and variables a Worker's pool is wired from: `LEASE_*`, `DB_*`, the coordinator, Hyperdrive. */
export interface WorkerPoolEnv extends SettingsEnv {
  /** The coordinator's namespace: `ConnectionCoordinator`, exported by the Worker or bound from another. */
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

// Kept per isolate, across requests: a pool's breaker and safe mode, and its shard state.
const isolate = new Map<string, { breaker: CircuitBreaker; safeMode: SafeMode }>();
const shardStates = new Map<string, IsolateShards>();

/** The isolate's shard state for this pool, or undefined for one object without batching. */
function shardStateFor(pool: PoolSettings): IsolateShards | undefined {
  const { name, shards, blockMax, blockIdleMs, config } = pool;
  if (shards === 1 && blockMax === 0) return undefined;
  const key = `${name}|${shards}|${config.limit}|${blockMax}|${blockIdleMs}`;
  let state = shardStates.get(key);
  if (!state) {
    state = createIsolateShards({ shards, limit: config.limit, maxBlock: blockMax, idleMs: blockIdleMs });
    shardStates.set(key, state);
  }
  return state;
}

/** A coordinator object, created near the database when `LEASE_LOCATION_HINT` is set. */
function coordinatorStub(env: WorkerPoolEnv, hint: string | undefined, name: string): DurableObjectStub<ConnectionCoordinator> {
  const id = env.COORDINATOR_DO.idFromName(name);
  return hint ? env.COORDINATOR_DO.get(id, { locationHint: hint as DurableObjectLocationHint }) : env.COORDINATOR_DO.get(id);
}

/** The pool's leases and controls: one object, shards, or none (`COORDINATOR=off`). */
function coordination(env: WorkerPoolEnv, pool: PoolSettings, waitUntil: (p: Promise<unknown>) => void, target: ReconcileTarget) {
  if (!pool.coordinator) return { leases: undefined, operator: undefined };
  const { name, locationHint, learn } = pool;
  const sharded = shardStateFor(pool);
  if (!sharded) {
    const stub = coordinatorStub(env, locationHint, name);
    const leases = new Leases(stub, { pool: name, waitUntil });
    const controls = coordinatorControls(stub, target);
    if (!learn) return { leases, operator: controls };
    // LEASE_LIMIT=auto: a stale learning is redone in waitUntil, never on this request's lease.
    learnWhenStale(stub, target, learn, name, waitUntil);
    return { leases, operator: { ...controls, learn: () => learnNow(stub, target, learn) } };
  }
  const stubFor = (i: number) => coordinatorStub(env, locationHint, shardName(name, i, sharded.count));
  const stubs = Array.from({ length: sharded.count }, (_, i) => stubFor(i));
  const leases = new ShardedLeases({ coordinators: stubs, isolate: sharded, waitMs: pool.config.waitMs, waitUntil, reconnect: stubFor, pool: name });
  return { leases, operator: shardedControls(stubs, target) };
}

/**
 * The pool of this request, wired from env: `LEASE_*` (limit, queue, TTL, shards, lease block),
 * `DB_*` and `HYPERDRIVE` (driver, deadline, retries, breaker, safe mode), `COORDINATOR_DO`.
 * Call it per request (it is cheap: config is validated once per isolate); closing connections
 * and releasing leases run in `ctx.waitUntil`. Bad settings throw `INVALID_CONFIG` naming the
 * variable.
 *
 * @example
 * const pool = workerPool(env, ctx);
 * const rows = await pool.sql((sql) => sql`SELECT id, title FROM pitches LIMIT 10`);
 * const [n] = await pool.db.query("SELECT count(*)::int AS n FROM pitches");
 */
export function workerPool(env: WorkerPoolEnv, ctx: { waitUntil(promise: Promise<unknown>): void }, options: { pool?: string } = {}): LeasedPool {
  const settings = settingsFromEnv(env);
  const pool = options.pool === undefined ? settings.pool : { ...settings.pool, name: options.pool };
  const { name } = pool;
  const config = settings.database;
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  let kept = isolate.get(name);
  if (!kept) {
    kept = { breaker: new CircuitBreaker(name, config.breaker), safeMode: new SafeMode(config.safeMode) };
    isolate.set(name, kept);
  }
  const target = { connectionString: env.HYPERDRIVE.connectionString, applicationName: config.applicationName };
  const { leases, operator } = coordination(env, pool, waitUntil, target);
  const db = new Database({ name, driver: openDriver(config), leases, config, ...kept, waitUntil });
  return {
    name,
    leases,
    db,
    operator,
    sql: leasedSql(db, () => connectFromWorker(config.connectionString, config.applicationName, config.connectTimeoutMs), closeConnection),
  };
}
