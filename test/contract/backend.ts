/**
 * What the contract suite needs from a coordinator backend: a fresh pool, and a way to restart
 * the coordinator of that pool (a Durable Object reset, a process that closes and starts again).
 * Each backend supplies only this; `cases.ts` holds every case once.
 */
import type {
  AcquireOptions,
  AcquireResult,
  ControlResult,
  LeaseRef,
  OperatorStats,
  PoolConfig,
  PoolStats,
  ReleaseResult,
  RenewResult,
  RevokeResult,
} from "../../src/core/index.ts";

/**
 * The one configuration every case runs with. The workerd pool's config comes from the bindings
 * in `vitest.workers.config.ts` (LEASE_LIMIT 3, LEASE_WAIT_MS 400, LEASE_TTL_MS 30000,
 * LEASE_MAX_QUEUE 5) and cannot change per test, so the Postgres backend uses the same values.
 * Cases vary only per-call options (`waitMs`, `ttlMs`, `priority`, `tenant`, `holder`).
 */
export const CONTRACT_CONFIG: PoolConfig = { limit: 3, waitMs: 400, leaseTtlMs: 30_000, maxQueue: 5 };

/**
 * The calls both coordinators answer, with the same result objects (`src/core/protocol.ts`).
 *
 * @example
 * const r = await coordinator.acquire({ holder: "a", waitMs: 0 });
 */
export interface ContractCoordinator {
  acquire(options?: AcquireOptions): Promise<AcquireResult>;
  release(ref: LeaseRef): Promise<ReleaseResult>;
  renew(ref: LeaseRef, ttlMs?: number): Promise<RenewResult>;
  stats(): Promise<PoolStats>;
  pause(): Promise<ControlResult>;
  resume(): Promise<ControlResult>;
  setLimit(limit: number | null): Promise<ControlResult>;
  revoke(idOrPrefix: string): Promise<RevokeResult>;
  operatorStats(): Promise<OperatorStats>;
}

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
