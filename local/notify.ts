/**
 * The wake-up transport between processes sharing a pool: the transition that grants or times out
 * a waiter announces it on the pool's channel (`NOTIFY`, delivered on commit only), and the
 * process where the caller waits answers it from the notice — the same answer the Durable Object
 * gives, built by the same functions.
 *
 * A notice is lines of space-separated fields:
 *   g <leaseId> <fence> <grantedAt> <expiresAt> <held> <waiting> <grantable>
 *   t <leaseId> <waitedMs> <limit> <held> <waiting> <retryAfterMs> <grantable>
 */
import { type Effects, type PoolState, timeoutFacts } from "../src/core/index.ts";
import { type Waiters, grantResult, loadOf, timeoutResult } from "../src/engine/index.ts";

/** Lines per notice: a payload must stay under Postgres's 8000-byte limit. */
const LINES_PER_NOTICE = 60;

/**
 * The notices that announce what a transition settled, to be sent in its transaction.
 *
 * @example
 * const notices = noticesOf(state, effects);
 */
export function noticesOf(state: PoolState, effects: Effects): string[] {
  if (effects.granted.length === 0 && effects.timedOut.length === 0) return [];
  const { held, waiting, limit: grantable } = loadOf(state);
  const lines = [
    ...effects.granted.map((l) => `g ${l.id} ${l.fence} ${l.grantedAt} ${l.expiresAt} ${held} ${waiting} ${grantable}`),
    ...effects.timedOut.map((w) => {
      const f = timeoutFacts(state, w);
      return `t ${w.leaseId} ${f.waitedMs} ${f.limit} ${f.held} ${f.waiting} ${f.retryAfterMs} ${grantable}`;
    }),
  ];
  const notices: string[] = [];
  for (let i = 0; i < lines.length; i += LINES_PER_NOTICE) notices.push(lines.slice(i, i + LINES_PER_NOTICE).join("\n"));
  return notices;
}

/**
 * Answers the callers parked in this process that a notice names; lines for other processes'
 * callers are ignored.
 *
 * @example
 * sql.listen(channel, (payload) => deliver(waiters, payload));
 */
export function deliver(waiters: Waiters, payload: string): void {
  for (const line of payload.split("\n")) {
    const [kind, id, ...f] = line.split(" ");
    const holder = id === undefined ? undefined : waiters.holderOf(id);
    if (holder === undefined) continue;
    const n = f.map(Number);
    if (kind === "g") {
      const lease = { id: id!, fence: n[0]!, holder, grantedAt: n[1]!, expiresAt: n[2]! };
      waiters.settle(id!, grantResult(lease, { held: n[3]!, waiting: n[4]!, limit: n[5]! }));
    } else if (kind === "t") {
      const facts = { waitedMs: n[0]!, limit: n[1]!, held: n[2]!, waiting: n[3]!, retryAfterMs: n[4]! };
      waiters.settle(id!, timeoutResult(facts, { held: n[2]!, waiting: n[3]!, limit: n[5]! }));
    }
  }
}
