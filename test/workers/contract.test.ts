import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { type PoolState, reconfigure } from "../../src/core/index.ts";
import {
  type ContractCoordinator,
  type ContractOptions,
  type ContractPool,
  defineContract,
} from "../contract/cases.ts";
import { restartCoordinator } from "../support/coordinator.ts";

// The contract against the real Durable Object in workerd. Its config is the pool's bindings in
// vitest.workers.config.ts (limit 3, wait 400 ms, TTL 30 s, queue 5): the contract's config.
// Every case takes an object of its own: objects keep their state across tests in a file.
let seq = 0;

/** The stub's RPC types wrap each answer; the answers themselves are the protocol's plain objects. */
const asCoordinator = (stub: unknown) => stub as ContractCoordinator;

defineContract("ConnectionCoordinator (Durable Object in workerd)", () => ({
  async fresh(options: ContractOptions = {}): Promise<ContractPool> {
    const name = `contract-${++seq}-${Date.now().toString(36)}`;
    if (options.queue !== undefined) {
      // The bindings are the suite's: the object's pool takes the mode LEASE_QUEUE would give it.
      const queue = options.queue;
      await runInDurableObject(env.COORDINATOR_DO.getByName(name), (instance) => {
        const pool = (instance as unknown as { pool: PoolState }).pool;
        reconfigure(pool, { ...pool.config, queue }, Date.now());
      });
    }
    const pool: ContractPool = {
      coordinator: asCoordinator(env.COORDINATOR_DO.getByName(name)),
      async restart() {
        // Crashes the object (a deploy or an eviction); the old stub is unusable after it.
        pool.coordinator = asCoordinator(await restartCoordinator(name));
        return pool.coordinator;
      },
    };
    return pool;
  },
}));
