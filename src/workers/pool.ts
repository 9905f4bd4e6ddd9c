import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { Leases } from "../client/leases.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards, shardName } from "../client/sharded-leases.ts";
import { LeaseError, type PoolEnv, configFromEnv, intFromEnv, learnSettingsFromEnv } from "../core/index.ts";
import { CircuitBreaker } from "../db/circuit-breaker.ts";
import { type DatabaseConfig, type DatabaseEnv, databaseConfig } from "../db/config.ts";
import { openDriver } from "../db/connect.ts";
import { Database } from "../db/database.ts";
import { closeConnection, connectFromWorker } from "../db/hyperdrive.ts";
import { SafeMode } from "../db/safe-mode.ts";
import type { LeasedPool } from "../db/pool.ts";
import { learnNow, learnWhenStale } from "./learn.ts";
import { type ReconcileTarget, coordinatorControls, shardedControls } from "./operator.ts";

/** The bindings and variables a Worker's pool is wired from. */
export interface WorkerPoolEnv extends PoolEnv, DatabaseEnv {
  /** The coordinator's namespace: `ConnectionCoordinator`, exported by the Worker or bound from another. */
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string | undefined;
  /** Pool name: one coordinator object per name. Default `main`. */
  LEASE_POOL?: string | undefined;
  /** Coordinator objects the pool's limit is split across (`${pool}#${i}`); 1 = one object named `${pool}`. */
  LEASE_SHARDS?: string | undefined;
  /** Leases an isolate may keep and hand to its own requests (batching); 0 = off. */
  LEASE_BLOCK?: string | undefined;
  /** How long a batched lease may idle in an isolate before it goes back, ms. */
  LEASE_BLOCK_IDLE_MS?: string | undefined;
  /** Where coordinator objects are created (`locationHint`, e.g. `weur`): near the database. */
  LEASE_LOCATION_HINT?: string | undefined;
}

const isolate = new Map<string, { breaker: CircuitBreaker; safeMode: SafeMode }>();
// Validated once per env object (once per isolate in production), not on every request.
const configs = new WeakMap<object, DatabaseConfig>();
const shardStates = new Map<string, IsolateShards>();

/** The isolate's shard state for this pool, or undefined for one object without batching. */
function shardStateFor(env: WorkerPoolEnv, pool: string): IsolateShards | undefined {
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
function coordinatorStub(env: WorkerPoolEnv, name: string): DurableObjectStub<ConnectionCoordinator> {
  const hint = env.LEASE_LOCATION_HINT?.trim();
  const id = env.COORDINATOR_DO.idFromName(name);
  return hint ? env.COORDINATOR_DO.get(id, { locationHint: hint as DurableObjectLocationHint }) : env.COORDINATOR_DO.get(id);
}

/** The pool's leases and controls: one object, shards, or none (`COORDINATOR=off`). */
function coordination(env: WorkerPoolEnv, pool: string, waitUntil: (p: Promise<unknown>) => void, target: ReconcileTarget) {
  if (env.COORDINATOR === "off") return { leases: undefined, operator: undefined };
  const sharded = shardStateFor(env, pool);
  const learn = learnSettingsFromEnv(env);
  if (!sharded) {
    const stub = coordinatorStub(env, pool);
    const controls = coordinatorControls(stub, target);
    if (!learn) return { leases: new Leases(stub), operator: controls };
    // LEASE_LIMIT=auto: a stale learning is redone in waitUntil, never on this request's lease.
    learnWhenStale(stub, target, learn, pool, waitUntil);
    return { leases: new Leases(stub), operator: { ...controls, learn: () => learnNow(stub, target, learn) } };
  }
  if (learn)
    throw new LeaseError(
      "INVALID_CONFIG",
      "`LEASE_LIMIT=auto` cannot be combined with `LEASE_SHARDS` or `LEASE_BLOCK` (one coordinator object learns the limit)",
    );
  const stubFor = (i: number) => coordinatorStub(env, shardName(pool, i, sharded.count));
  const stubs = Array.from({ length: sharded.count }, (_, i) => stubFor(i));
  const waitMs = configFromEnv(env).waitMs;
  const leases = new ShardedLeases({ coordinators: stubs, isolate: sharded, waitMs, waitUntil, reconnect: stubFor });
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
  const name = options.pool ?? (env.LEASE_POOL || "main");
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const config = configs.get(env) ?? databaseConfig(env);
  configs.set(env, config);
  let kept = isolate.get(name);
  if (!kept) {
    kept = { breaker: new CircuitBreaker(name, config.breaker), safeMode: new SafeMode(config.safeMode) };
    isolate.set(name, kept);
  }
  const target = { connectionString: env.HYPERDRIVE.connectionString, applicationName: config.applicationName };
  const { leases, operator } = coordination(env, name, waitUntil, target);
  const db = new Database({ name, driver: openDriver(config), leases, config, ...kept, waitUntil });
  return {
    name,
    leases,
    db,
    operator,
    sql: (fn, callOptions = {}) =>
      db.run(async ({ beforeRelease }) => {
        const sql = connectFromWorker(config.connectionString, config.applicationName);
        beforeRelease(() => closeConnection(sql));
        return db.timed(callOptions.holder ?? "sql", () => fn(sql), callOptions.holder);
      }, callOptions),
  };
}
