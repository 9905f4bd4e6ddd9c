import { type Leases, isLeaseError, type LeaseGrant } from "leasegate";

// Branch on `code`, never on the message text.
export async function acquireOrAnswer(leases: Leases): Promise<LeaseGrant | Response> {
  try {
    return await leases.acquire({ waitMs: 2000 });
  } catch (e) {
    if (!isLeaseError(e)) throw e;
    if (e.code === "QUEUE_FULL" || e.code === "ACQUIRE_TIMEOUT" || e.code === "COORDINATOR_UNAVAILABLE") {
      const seconds = Math.max(1, Math.ceil((e.retryAfterMs ?? 1000) / 1000));
      return Response.json({ error: { code: e.code } }, { status: 503, headers: { "retry-after": String(seconds) } });
    }
    throw e;
  }
}
