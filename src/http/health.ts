import { isLeaseError } from "../core/index.ts";
import { json } from "./respond.ts";

/** Options of {@link healthResponse}: what to check, each a function that throws when it is down. */
export interface HealthOptions {
  /** One cheap statement under a lease, e.g. `() => db.query("SELECT 1", [], { waitMs: 1000 })`. */
  database: () => Promise<unknown>;
  /** The coordinator's stats; undefined when the app runs without one (`COORDINATOR=off`). */
  coordinator?: (() => Promise<unknown>) | undefined;
  /** Extra fields for the answer, e.g. the database layer's breaker and safe mode. */
  status?: (() => Record<string, unknown>) | undefined;
}

/**
 * The health answer: 200 `{status: "ok" | "degraded", database, coordinator}`, or 503
 * `unavailable` while the database or the coordinator is down. A full pool is `saturated`
 * (degraded, still 200): the database answers, just not for one more caller right now.
 *
 * @example
 * if (url.pathname === "/health") return healthResponse({ database: () => db.query("SELECT 1"), coordinator: () => leases.stats() });
 */
export async function healthResponse(options: HealthOptions): Promise<Response> {
  let coordinator: "up" | "down" | "off" = "off";
  if (options.coordinator) {
    try {
      await options.coordinator();
      coordinator = "up";
    } catch {
      coordinator = "down";
    }
  }
  let database: "up" | "down" | "saturated" = "up";
  try {
    await options.database();
  } catch (error) {
    const code = isLeaseError(error) ? error.code : "";
    database = code === "QUEUE_FULL" || code === "ACQUIRE_TIMEOUT" ? "saturated" : "down";
  }
  const healthy = database !== "down" && coordinator !== "down";
  const status = !healthy ? "unavailable" : database === "saturated" ? "degraded" : "ok";
  return json({ status, database, coordinator, ...options.status?.() }, healthy ? 200 : 503);
}
