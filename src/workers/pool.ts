import type { ConnectionCoordinator } from "../../durable-objects/connection-coordinator.ts";
import { Leases } from "../client/leases.ts";
import { ReleaseOutbox } from "../client/outbox.ts";
import { type IsolateShards, ShardedLeases, createIsolateShards, shardName } from "../client/sharded-leases.ts";
import { LeaseError, type PoolSettings } from "../core/index.ts";
import { CircuitBreaker } from "../db/circuit-breaker.ts";
import { type DatabaseConfig, type SettingsEnv, settingsFromEnv, withPoolApplicationName } from "../db/config.ts";
import { type DriverModule, bindDriver, targetOf } from "../db/driver.ts";
import type { LeaseTracer } from "../tracing.ts";
import { Database, retryBudgetFor } from "../db/database.ts";
import type { RetryBudget } from "../db/retry-budget.ts";
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

/** What `workerPool` is given besides env and ctx. */
export interface WorkerPoolOptions<Client> {
  /** The app's driver: `driver` from `leasegate/postgres`, `leasegate/pg` or `leasegate/neon`. */
  driver: DriverModule<Client>;
  /** Pool name: one coordinator object per name. Default: `LEASE_POOL`, else `main`. */
  pool?: string | undefined;
  /** An OpenTelemetry tracer (`trace.getTracer("my-worker")`): spans of each lease's wait and hold (docs/tracing.md). */
  tracer?: LeaseTracer | undefined;
}

/** `map`'s value for `key`, made by `make` the first time it is asked for. */
function kept<K, V>(map: { get(key: K): V | undefined; set(key: K, value: V): unknown }, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}

// Kept per isolate, across requests: a pool's breaker, retry budget and safe mode, and its shard state.
const isolate = new Map<string, { breaker: CircuitBreaker; retryBudget: RetryBudget | null; safeMode: SafeMode }>();
const shardStates = new Map<string, IsolateShards>();
/**
 * A pool's finished leases waiting for the isolate's next acquire to carry their release: under
 * load most requests then make one coordinator call, not two.
 */
const outboxes = new WeakMap<DurableObjectNamespace, Map<string, ReleaseOutbox>>();

/** The isolate's outbox for this pool (`LEASE_RELEASE_CARRY_MS`), or none with `0`. */
function outboxFor(env: WorkerPoolEnv, pool: PoolSettings): ReleaseOutbox | undefined {
  if (pool.carryMs === 0) return undefined;
  const byPool = kept(outboxes, env.COORDINATOR_DO, () => new Map<string, ReleaseOutbox>());
  return kept(byPool, `${pool.name}|${pool.carryMs}`, () => new ReleaseOutbox(pool.carryMs));
}

/** The isolate's shard state for this pool, or undefined for one object without batching. */
function shardStateFor(pool: PoolSettings): IsolateShards | undefined {
  const { name, shards, blockMax, blockIdleMs } = pool;
  if (shards === 1 && blockMax === 0) return undefined;
  const key = `${name}|${shards}|${blockMax}|${blockIdleMs}`;
  return kept(shardStates, key, () => createIsolateShards({ shards, maxBlock: blockMax, idleMs: blockIdleMs }));
}

/**
 * Coordinator ids by namespace and pool name, kept for the isolate's life: an id is plain data
 * (unlike a stub, which belongs to the request that made it), and deriving it from the name on
 * every request cost about as much CPU as the request's lease calls (measured under P3's load).
 */
const coordinatorIds = new WeakMap<DurableObjectNamespace, Map<string, DurableObjectId>>();

/** The database config of each pool, with its own `application_name`, kept per parsed settings (per env). */
const named = new WeakMap<DatabaseConfig, Map<string, DatabaseConfig>>();

/** What names a pool among every deployment on a server: its coordinator object's id (its name without a namespace). */
function poolIdentity(env: WorkerPoolEnv, name: string): string {
  const namespace = env.COORDINATOR_DO;
  if (!namespace) return name;
  const ids = kept(coordinatorIds, namespace, () => new Map<string, DurableObjectId>());
  return kept(ids, name, () => namespace.idFromName(name)).toString();
}

/** A coordinator object, created near the database when `LEASE_LOCATION_HINT` is set. */
function coordinatorStub(
  env: WorkerPoolEnv,
  hint: string | undefined,
  name: string,
): DurableObjectStub<ConnectionCoordinator> {
  const namespace = env.COORDINATOR_DO;
  const ids = kept(coordinatorIds, namespace, () => new Map<string, DurableObjectId>());
  const id = kept(ids, name, () => namespace.idFromName(name));
  return hint ? namespace.get(id, { locationHint: hint as DurableObjectLocationHint }) : namespace.get(id);
}

/** The pool's leases and controls: one object, shards, or none (`COORDINATOR=off`). */
function coordination(
  env: WorkerPoolEnv,
  pool: PoolSettings,
  waitUntil: (p: Promise<unknown>) => void,
  target: ReconcileTarget,
  tracer: LeaseTracer | undefined,
) {
  if (!pool.coordinator) return { leases: undefined, operator: undefined };
  const { name, locationHint, learn } = pool;
  const sharded = shardStateFor(pool);
  // An object's controls, and with LEASE_LIMIT=auto its learning (a sharded pool's root learns) —
  // a stale one is redone in waitUntil, never on this request's lease.
  const learning = <C extends object>(stub: DurableObjectStub<ConnectionCoordinator>, controls: C) => {
    if (!learn) return controls;
    const settings = { ...target, intervalMs: learn.intervalMs };
    learnWhenStale(stub, settings, name, waitUntil);
    return { ...controls, learn: () => learnNow(stub, settings) };
  };
  const one = (stub: DurableObjectStub<ConnectionCoordinator>) => learning(stub, coordinatorControls(stub, target));
  if (!sharded) {
    const stub = coordinatorStub(env, locationHint, name);
    const outbox = outboxFor(env, pool);
    const { claimMs, localShed } = pool;
    const leases = new Leases(stub, { pool: name, waitUntil, claimMs, localShed, outbox, tracer });
    return { leases, operator: one(stub) };
  }
  const stubFor = (i: number) => coordinatorStub(env, locationHint, shardName(name, i, sharded.count));
  const stubs = Array.from({ length: sharded.count }, (_, i) => stubFor(i));
  // With shards, the object named after the pool is their root: it owns the limit (and learns it).
  const root = sharded.count === 1 ? undefined : coordinatorStub(env, locationHint, name);
  const leases = new ShardedLeases({
    coordinators: stubs,
    root,
    isolate: sharded,
    waitMs: pool.config.waitMs,
    waitUntil,
    reconnect: stubFor,
    pool: name,
    claimMs: pool.claimMs,
    localShed: pool.localShed,
    tracer,
  });
  return { leases, operator: root ? learning(root, shardedControls(stubs, root, target, name)) : one(stubs[0]!) };
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
  const settings = settingsFromEnv(env);
  const pool = options.pool === undefined ? settings.pool : { ...settings.pool, name: options.pool };
  const { name } = pool;
  // Without APPLICATION_NAME, the pool's connections carry a name of its own: the coordinator
  // object's id is unique to this namespace (this deployment) and pool name.
  const config = kept(
    kept(named, settings.database, () => new Map<string, DatabaseConfig>()),
    name,
    () => withPoolApplicationName(settings.database, env, poolIdentity(env, name)),
  );
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const guards = kept(isolate, name, () => ({
    breaker: new CircuitBreaker(name, config.breaker),
    retryBudget: retryBudgetFor(name, config),
    safeMode: new SafeMode(config.safeMode),
  }));
  const target = {
    connect: (applicationName: string) => driver.connect({ ...targetOf(config), applicationName }),
    applicationName: config.applicationName,
    enforce: pool.enforce,
    pooler: config.pooler,
  };
  const { leases, operator } = coordination(env, pool, waitUntil, target, options.tracer);
  const bound = bindDriver(driver, config);
  const db = new Database({
    name,
    driver: bound,
    leases,
    config,
    ...guards,
    waitUntil,
    tagLeases: pool.enforce !== null,
  });
  return { name, leases, db, operator, sql: leasedSql(db, bound) };
}
