import { env } from "cloudflare:workers";
import { type ContractCoordinator, type ContractPool, defineContract } from "../contract/cases.ts";
import { restartCoordinator } from "../support/coordinator.ts";

// The contract against the real Durable Object in workerd. Its config is the pool's bindings in
// vitest.workers.config.ts (limit 3, wait 400 ms, TTL 30 s, queue 5): the contract's config.
// Every case takes an object of its own: objects keep their state across tests in a file.
let seq = 0;

/** The stub's RPC types wrap each answer; the answers themselves are the protocol's plain objects. */
const asCoordinator = (stub: unknown) => stub as ContractCoordinator;

defineContract("ConnectionCoordinator (Durable Object in workerd)", () => ({
  async fresh(): Promise<ContractPool> {
    const name = `contract-${++seq}-${Date.now().toString(36)}`;
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
