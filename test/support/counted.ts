import type { LeaseClient } from "../../src/client/leases.ts";

/**
 * A lease client that records each coordinator call it passes on to `real` (acquire, release,
 * renew), so a test can assert which calls a piece of code made.
 *
 * @example
 * const calls: string[] = []; const leases = counted(new Leases(stub), calls);
 */
export function counted(real: LeaseClient, calls: string[]): LeaseClient {
  return {
    acquire: (o) => {
      calls.push("acquire");
      return real.acquire(o);
    },
    release: (l) => {
      calls.push("release");
      return real.release(l);
    },
    renew: (l, t) => {
      calls.push("renew");
      return real.renew(l, t);
    },
    stats: () => real.stats(),
  };
}
