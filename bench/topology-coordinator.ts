/**
 * The coordinator's own Worker for `npm run bench:topology`: it exports `ConnectionCoordinator`
 * (as a production deployment's coordinator Worker does) and a no-op object, whose call over the
 * same path measures the injected round trip.
 */
import { DurableObject } from "cloudflare:workers";

export { ConnectionCoordinator } from "../src/workers.ts";

/** Answers at once: the round trip from a Worker process to this process, and nothing else. */
export class NoopObject extends DurableObject {
  ping(): number {
    return 0;
  }
}

export default {
  fetch: () => new Response("leasegate topology coordinator", { status: 404 }),
} satisfies ExportedHandler;
