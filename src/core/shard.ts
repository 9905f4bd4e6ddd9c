import { checkInt } from "./config.ts";
import type { PoolConfig } from "./types.ts";

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

/** Which part of a sharded pool a coordinator object is: shard `index` of `count`. */
export interface ShardRef {
  index: number;
  count: number;
}

function partOf(total: number, index: number, count: number): number {
  return Math.floor(total / count) + (index < total % count ? 1 : 0);
}

/**
 * The configuration shard `index` of `count` enforces: the limit split by `shardLimits`, and the
 * queue cap, reserved slots, batch cap and adaptive floor split the same way (clamped so each
 * shard's config stays valid). Waits and TTLs are per request and stay as they are. Every shard
 * needs a slot, so `count` may not exceed the limit (`INVALID_ARGUMENT`).
 *
 * @example
 * shardConfig({ limit: 18, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 30000 }, 3, 4).limit // 4
 */
export function shardConfig(config: PoolConfig, index: number, count: number): PoolConfig {
  checkInt("shards", count, 1, Math.min(1024, config.limit));
  checkInt("shard", index, 0, count - 1);
  if (count === 1) return config;
  const limit = shardLimits(config.limit, count)[index]!;
  const { reserved, batchMax, adaptive } = config;
  return {
    ...config,
    limit,
    maxQueue: partOf(config.maxQueue, index, count),
    reserved: reserved === undefined ? undefined : Math.min(partOf(reserved, index, count), limit - 1),
    batchMax: batchMax === undefined ? undefined : Math.min(partOf(batchMax, index, count), limit),
    adaptive:
      adaptive === undefined
        ? undefined
        : { ...adaptive, floor: Math.max(1, Math.min(limit, partOf(adaptive.floor, index, count))) },
  };
}
