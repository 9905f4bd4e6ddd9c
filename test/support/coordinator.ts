import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";

/** A stub to the coordinator object of one pool (workerd tests only). */
export type CoordinatorStub = ReturnType<typeof env.COORDINATOR_DO.getByName>;

/**
 * Crashes the pool's object (as a deploy or an eviction would) and returns a stub to its new
 * instance: a stub that saw its object reset keeps failing, so callers must take the new one.
 */
export async function restartCoordinator(name: string): Promise<CoordinatorStub> {
  await runInDurableObject(env.COORDINATOR_DO.getByName(name), (_, state) => state.abort("restart")).catch(() => {});
  return env.COORDINATOR_DO.getByName(name);
}

/** Acquires a lease that must be granted at once; fails the test with the code otherwise. */
export async function grantNow(stub: CoordinatorStub, holder = "t") {
  const r = await stub.acquire({ holder });
  if (!r.ok) throw new Error(`expected a grant, got ${r.code}`);
  return r.lease;
}
