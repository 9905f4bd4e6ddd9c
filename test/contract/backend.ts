/**
 * What the contract suite needs from a coordinator backend: a fresh pool, and a way to restart
 * the coordinator of that pool (a Durable Object reset, a process that closes and starts again).
 * Each backend supplies only this; `cases.ts` holds every case once.
 */
import type { PoolConfig, QueueMode } from "../../src/core/index.ts";
import type { CoordinatorBackend } from "../../src/engine/coordinator.ts";

/**
 * The one configuration every case runs with. The workerd pool's config comes from the bindings
 * in `vitest.workers.config.ts` (LEASE_LIMIT 3, LEASE_WAIT_MS 400, LEASE_TTL_MS 30000,
 * LEASE_MAX_QUEUE 5, LEASE_QUEUE fifo — a config without `queue`) and cannot change per test, so the Postgres backend uses the same values.
 * Cases vary only per-call options (`waitMs`, `ttlMs`, `priority`, `tenant`, `holder`), and the
 * queue mode through {@link ContractOptions}.
 */
export const CONTRACT_CONFIG: PoolConfig = { limit: 3, waitMs: 400, leaseTtlMs: 30_000, maxQueue: 5 };

/**
 * The calls both coordinators answer, with the same result objects (`src/core/protocol.ts`): the
 * one declared interface both backends implement, not a copy of it.
 *
 * @example
 * const r = await coordinator.acquire({ holder: "a", waitMs: 0 });
 */
export type ContractCoordinator = CoordinatorBackend;

/**
 * One fresh pool of a backend. `coordinator` is the current one; `restart()` replaces it with a
 * new coordinator of the same pool (state kept in that backend's storage) and returns it.
 *
 * @example
 * const pool = await backend.fresh();
 * await pool.coordinator.acquire({ holder: "a" });
 * const again = await pool.restart();
 */
export interface ContractPool {
  coordinator: ContractCoordinator;
  restart(): Promise<ContractCoordinator>;
}

/**
 * What a case may ask of its pool beyond `CONTRACT_CONFIG`: the queue mode `LEASE_QUEUE` sets. The
 * Postgres backend puts it in its coordinator's config; the Durable Object's bindings are the
 * suite's, so its backend sets the object's pool config to it (what the object loads from
 * `LEASE_QUEUE`) before the case's first call.
 *
 * @example
 * const pool = await backend.fresh({ queue: "adaptive" });
 */
export interface ContractOptions {
  queue?: QueueMode | undefined;
}

/**
 * A backend under contract: makes a fresh pool (a name of its own) per case, always with
 * `CONTRACT_CONFIG` (and `options`).
 *
 * @example
 * defineContract("PostgresCoordinator", () => ({ fresh: async () => ({ coordinator, restart }) }));
 */
export interface ContractBackend {
  fresh(options?: ContractOptions): Promise<ContractPool>;
}
