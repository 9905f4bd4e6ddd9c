import { Leases } from "leasegate";
import { driver } from "leasegate/postgres";
import type { ConnectionCoordinator } from "leasegate/workers";

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

// The lease alone, around a connection of your own: no retries, breaker or deadline (workerPool has them).
export async function trending(env: Env, ctx: ExecutionContext) {
  const leases = new Leases(env.COORDINATOR_DO.getByName("main"));
  return await leases.withLease(
    async ({ beforeRelease }) => {
      const conn = await driver.connect({
        connectionString: env.HYPERDRIVE.connectionString,
        applicationName: "my-app",
        connectTimeoutMs: 5000,
        edge: true,
      });
      beforeRelease(() => conn.close());
      return await conn.client`SELECT * FROM pitches ORDER BY view_count DESC LIMIT 10`;
    },
    { waitUntil: (p) => ctx.waitUntil(p) },
  );
}
