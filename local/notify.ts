/**
 * The wake-up transport between processes sharing a pool: the transition that grants or times out
 * a waiter announces it on the pool's channel (`NOTIFY`, delivered on commit only), and the
 * process where the caller waits answers it from the notice — the same answer the Durable Object
 * gives, built by the same functions.
 *
 * A notice is lines, one per settled waiter: its lease id, a space, then JSON —
 *   <leaseId> {"grant":[<the lease's other fields but holder, as LEASE_FIELDS encodes them>],"load":{…}}
 *   <leaseId> {"timeout":{<TimeoutFacts>},"load":{…}}
 * The id comes first so a process skips lines for other processes' callers without parsing them;
 * the lease travels in the field list's encoding, so a new lease field needs no edit here.
 */
import {
  type Effects,
  type Lease,
  type PoolState,
  type ShardLoad,
  type TimeoutFacts,
  timeoutFacts,
} from "../src/core/index.ts";
import { type Waiters, grantResult, loadOf, timeoutResult } from "../src/engine/index.ts";
import { LEASE_FIELDS, codec } from "./fields.ts";

/** A granted lease in a notice: every stored field but the id (the line's first word) and the holder (its waiter knows it). */
const granted = codec<Lease>(LEASE_FIELDS.filter((f) => f.key !== "id" && f.key !== "holder"));

/** Bytes per notice at most: Postgres refuses a payload of 8000 bytes or more. */
const NOTICE_BYTES = 7900;

type Line = { grant: unknown[]; load: ShardLoad } | { timeout: TimeoutFacts; load: ShardLoad };

const utf8 = new TextEncoder();
/** A line's size in UTF-8: its length while it is printable ASCII (ids, numbers and class names are). */
const bytesOf = (line: string) => (/[^ -~]/.test(line) ? utf8.encode(line).length : line.length);

/**
 * The notices that announce what a transition settled, to be sent in its transaction.
 *
 * @example
 * const notices = noticesOf(state, effects);
 */
export function noticesOf(state: PoolState, effects: Effects): string[] {
  if (effects.granted.length === 0 && effects.timedOut.length === 0) return [];
  const load = loadOf(state);
  const line = (id: string, body: Line) => `${id} ${JSON.stringify(body)}`;
  const lines = [
    ...effects.granted.map((l) => line(l.id, { grant: granted.encode(l), load })),
    ...effects.timedOut.map((w) => line(w.leaseId, { timeout: timeoutFacts(state, w), load })),
  ];
  const notices: string[] = [];
  let notice = "";
  let bytes = 0;
  for (const l of lines) {
    const size = bytesOf(l) + 1;
    if (notice !== "" && bytes + size > NOTICE_BYTES) {
      notices.push(notice);
      notice = "";
      bytes = 0;
    }
    notice = notice === "" ? l : `${notice}\n${l}`;
    bytes += size;
  }
  if (notice !== "") notices.push(notice);
  return notices;
}

/**
 * Answers the callers parked in this process that a notice names; lines for other processes'
 * callers are skipped unread.
 *
 * @example
 * sql.listen(channel, (payload) => deliver(waiters, payload));
 */
export function deliver(waiters: Waiters, payload: string): void {
  for (const text of payload.split("\n")) {
    const space = text.indexOf(" ");
    const id = text.slice(0, space);
    const holder = space > 0 ? waiters.holderOf(id) : undefined;
    if (holder === undefined) continue;
    const line = JSON.parse(text.slice(space + 1)) as Line;
    if ("grant" in line) waiters.settle(id, grantResult({ ...granted.decode(line.grant), id, holder }, line.load));
    else waiters.settle(id, timeoutResult(line.timeout, line.load));
  }
}
