import type { Sql } from "postgres";
import { ConnectionCoordinator } from "../durable-objects/connection-coordinator.ts";
import { Leases } from "./client/leases.ts";
import type { PoolEnv } from "./core/index.ts";
import { closeConnection, connectFromWorker } from "./db/hyperdrive.ts";
import { toDatabaseError } from "./db/errors.ts";
import { countConnections } from "./db/reconcile.ts";
import { type AppDeps, type OperatorControls, type WithDatabase, handle } from "./http/app.ts";

export { ConnectionCoordinator };

export interface Env extends PoolEnv {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
  /** `off` bypasses leasing: for side-by-side comparisons only. */
  COORDINATOR?: string;
  DEBUG_TOKEN?: string;
  /** Pool name: one coordinator object per name. */
  LEASE_POOL?: string;
  /** `application_name` of the Worker's connections, to find them in `pg_stat_activity`. */
  APPLICATION_NAME?: string;
}

function connect(env: Env): Sql {
  return connectFromWorker(env.HYPERDRIVE.connectionString, env.APPLICATION_NAME || "leasegate");
}

/**
 * The Worker's wiring of the example app: leases from the pool's coordinator, connections through
 * Hyperdrive. Exported so tests can drive `handle` with the real wiring on a pool of their own.
 *
 * @example
 * handle(request, depsFor({ ...env, LEASE_POOL: "fuzz" }, ctx))
 */
export function depsFor(env: Env, ctx: ExecutionContext): AppDeps {
  const pool = env.LEASE_POOL || "main";
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  if (env.COORDINATOR === "off") {
    const withDatabase: WithDatabase = async (fn) => {
      const sql = connect(env);
      try {
        return await fn(sql);
      } catch (error) {
        throw toDatabaseError(error);
      } finally {
        waitUntil(closeConnection(sql));
      }
    };
    return { withDatabase, stats: undefined, debugToken: env.DEBUG_TOKEN, pool };
  }
  const coordinator = env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName(pool));
  const leases = new Leases(coordinator);
  const withDatabase: WithDatabase = (fn, { holder, waitMs }) =>
    leases.withLease(
      async ({ beforeRelease }) => {
        const sql = connect(env);
        beforeRelease(() => closeConnection(sql));
        try {
          return await fn(sql);
        } catch (error) {
          throw toDatabaseError(error);
        }
      },
      { holder, waitMs, waitUntil },
    );
  return { withDatabase, stats: () => leases.stats(), debugToken: env.DEBUG_TOKEN, pool, operator: operatorFor(env, coordinator) };
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

export default {
  async fetch(request, env, ctx): Promise<Response> {
    return handle(request, depsFor(env, ctx));
  },
  // Periodic reconciliation (the cron in wrangler.toml); on demand: POST /__coordinator/reconcile.
  async scheduled(_controller, env, _ctx): Promise<void> {
    if (env.COORDINATOR === "off") return;
    const pool = env.LEASE_POOL || "main";
    // Awaited, so a failed run (database down) shows as a failed cron invocation.
    await reconcileNow(env, env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName(pool)));
  },
} satisfies ExportedHandler<Env>;
