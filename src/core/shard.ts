import { checkInt } from "./config.ts";

/**
 * Splits a pool's global limit across `shards` coordinator objects. The parts sum to exactly
 * `limit`, so the sum of leases held across shards can never exceed it; shards beyond the limit
 * get 0 slots.
 *
 * @example
 * shardLimits(18, 4) // [5, 5, 4, 4]
 */
export function shardLimits(limit: number, shards: number): number[] {
  checkInt("limit", limit, 1, Number.MAX_SAFE_INTEGER);
  checkInt("shards", shards, 1, 1024);
  const base = Math.floor(limit / shards);
  const extra = limit % shards;
  return Array.from({ length: shards }, (_, i) => base + (i < extra ? 1 : 0));
}

/** What a client last heard from a shard (every coordinator answer carries it). */
export interface ShardLoad {
  held: number;
  waiting: number;
  limit: number;
}

function pressure(load: ShardLoad): number {
  // A shard with no slots is never worth choosing.
  return load.limit === 0 ? Infinity : (load.held + load.waiting) / load.limit;
}

/**
 * Power of two choices: of two shards drawn at random by the caller (`a`, `b`), the one with the
 * lower last-known pressure (held + waiting per slot). Ties go to `a`.
 *
 * @example
 * pickShard(loads, randomIndex(), randomIndex())
 */
export function pickShard(loads: readonly ShardLoad[], a: number, b: number): number {
  const la = loads[a];
  const lb = loads[b];
  if (!la) return b;
  if (!lb) return a;
  return pressure(lb) < pressure(la) ? b : a;
}

/**
 * What a coordinator object is, from its name: shard `index` of pool `pool` (`${pool}#${index}`),
 * or the root of pool `name` (any other name; with one shard the root is the pool's only object).
 * Null for an object without a name. The object reads its own name, so no caller can make it
 * another part of another split.
 *
 * @example
 * shardOf("main#2") // { pool: "main", shard: "2" }
 * shardOf("main") // { pool: "main", shard: "root" }
 */
export function shardOf(name: string | undefined | null): { pool: string; shard: string } | null {
  if (typeof name !== "string" || name === "") return null;
  const m = /^(.+)#(\d{1,4})$/.exec(name);
  if (m && Number(m[2]) < 1024 && String(Number(m[2])) === m[2]) return { pool: m[1]!, shard: m[2]! };
  return { pool: name, shard: "root" };
}
