import { afterAll } from "vitest";
import type { PostgresCoordinator } from "../../local/postgres-coordinator.ts";
import { CONTRACT_CONFIG, type ContractOptions, type ContractPool, defineContract } from "../contract/cases.ts";
import { localPools } from "./helpers.ts";

// The contract against PostgresCoordinator on the real Postgres of `npm test`, with the same
// config the workerd pool gets from its bindings. Every case takes a pool name of its own.
const pools = localPools("contract", CONTRACT_CONFIG);

afterAll(() => pools.cleanup());

defineContract("PostgresCoordinator (Postgres)", () => ({
  async fresh(options: ContractOptions = {}): Promise<ContractPool> {
    const name = pools.name();
    // FIFO unless the case asks otherwise, as the Durable Object suite's bindings (LEASE_QUEUE=fifo).
    const config = { queue: options.queue ?? "fifo" };
    let current: PostgresCoordinator = pools.coordinator(config, name);
    const pool: ContractPool = {
      coordinator: current,
      async restart() {
        // A process that stops and starts again: close withdraws only this coordinator's waiters
        // (the cases restart with none queued); the pool's rows stay and a new coordinator of the
        // same pool, on a client of its own, takes over.
        await current.close();
        current = pools.coordinator(config, name);
        pool.coordinator = current;
        return current;
      },
    };
    return pool;
  },
}));
