import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { Leases } from "../client/leases.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards, shardName } from "../client/sharded-leases.ts";
import { LeaseError, type PoolEnv, configFromEnv, intFromEnv } from "../core/index.ts";
import { CircuitBreaker } from "../db/circuit-breaker.ts";
import { type DatabaseConfig, type DatabaseEnv, databaseConfig } from "../db/config.ts";
import { type DriverModule, bindDriver, targetOf } from "../db/driver.ts";
import { Database } from "../db/database.ts";
import { SafeMode } from "../db/safe-mode.ts";
import type { LeasedPool } from "../db/pool.ts";
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

/** What `workerPool` is given besides env and ctx. */
export interface WorkerPoolOptions<Client> {
  /** The app's driver: `driver` from `leasegate/postgres`, `leasegate/pg` or `leasegate/neon`. */
  driver: DriverModule<Client>;
  /** Pool name: one coordinator object per name. Default: `LEASE_POOL`, else `main`. */
  pool?: string | undefined;
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
  if (!sharded) {
    const stub = coordinatorStub(env, pool);
    return { leases: new Leases(stub), operator: coordinatorControls(stub, target) };
  }
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
 * `driver` is the app's database driver, from `leasegate/postgres`, `leasegate/pg` or
 * `leasegate/neon`: the Worker bundles that one only.
 *
 * @example
 * import { driver } from "leasegate/postgres";
 * const pool = workerPool(env, ctx, { driver });
 * const rows = await pool.sql((sql) => sql`SELECT id, title FROM pitches LIMIT 10`);
 * const [n] = await pool.db.query("SELECT count(*)::int AS n FROM pitches");
 */
export function workerPool<Client>(
  env: WorkerPoolEnv,
  ctx: { waitUntil(promise: Promise<unknown>): void },
  options: WorkerPoolOptions<Client>,
): LeasedPool<Client> {
  const driver = options?.driver;
  if (!driver || typeof driver.connect !== "function") {
    throw new LeaseError(
      "INVALID_CONFIG",
      'workerPool needs `{ driver }`: `import { driver } from "leasegate/postgres"` (or `leasegate/pg`, `leasegate/neon`), with that driver package installed',
    );
  }
  const name = options.pool ?? (env.LEASE_POOL || "main");
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const config = configs.get(env) ?? databaseConfig(env);
  configs.set(env, config);
  let kept = isolate.get(name);
  if (!kept) {
    kept = { breaker: new CircuitBreaker(name, config.breaker), safeMode: new SafeMode(config.safeMode) };
    isolate.set(name, kept);
  }
  const target = {
    connect: (applicationName: string) => driver.connect({ ...targetOf(config), applicationName }),
    applicationName: config.applicationName,
  };
  const { leases, operator } = coordination(env, name, waitUntil, target);
  const bound = bindDriver(driver, config);
  const db = new Database({ name, driver: bound, leases, config, ...kept, waitUntil });
  return {
    name,
    leases,
    db,
    operator,
    sql: (fn, callOptions = {}) =>
      db.run(async ({ beforeRelease }) => {
        const conn = await bound.connect();
        beforeRelease(() => conn.close());
        return db.timed(callOptions.holder ?? "sql", () => fn(conn.client), callOptions.holder);
      }, callOptions),
  };
}
