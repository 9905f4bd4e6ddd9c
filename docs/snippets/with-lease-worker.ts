import { Leases, closeConnection, connectFromWorker, type ConnectionCoordinator } from "leasegate/workers";

interface Env {
  COORDINATOR_DO: DurableObjectNamespace<ConnectionCoordinator>;
  HYPERDRIVE: Hyperdrive;
}

export async function trending(env: Env, ctx: ExecutionContext) {
  const leases = new Leases(env.COORDINATOR_DO.get(env.COORDINATOR_DO.idFromName("main")));
  return await leases.withLease(
    async ({ beforeRelease }) => {
      const sql = connectFromWorker(env.HYPERDRIVE.connectionString);
      beforeRelease(() => closeConnection(sql));
      return await sql`SELECT * FROM pitches ORDER BY view_count DESC LIMIT 10`;
    },
    { waitUntil: (p) => ctx.waitUntil(p) },
  );
}
