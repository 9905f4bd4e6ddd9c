/**
 * What the contract suite needs from a coordinator backend: a fresh pool, and a way to restart
 * the coordinator of that pool (a Durable Object reset, a process that closes and starts again).
 * Each backend supplies only this; `cases.ts` holds every case once.
 */
import type { PoolConfig } from "../../src/core/index.ts";
import type { CoordinatorBackend } from "../../src/engine/coordinator.ts";

/**
 * The one configuration every case runs with. The workerd pool's config comes from the bindings
 * in `vitest.workers.config.ts` (LEASE_LIMIT 3, LEASE_WAIT_MS 400, LEASE_TTL_MS 30000,
 * LEASE_MAX_QUEUE 5) and cannot change per test, so the Postgres backend uses the same values.
 * Cases vary only per-call options (`waitMs`, `ttlMs`, `priority`, `tenant`, `holder`).
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
 * A backend under contract: makes a fresh pool (a name of its own) per case, always with
 * `CONTRACT_CONFIG`.
 *
 * @example
 * defineContract("PostgresCoordinator", () => ({ fresh: async () => ({ coordinator, restart }) }));
 */
export interface ContractBackend {
  fresh(): Promise<ContractPool>;
}
