export * from "./config.ts";
export * from "./errors.ts";
export * from "./histogram.ts";
export * from "./pool.ts";
export * from "./protocol.ts";
export * from "./shard.ts";
export * as block from "./lease-block.ts";
export * from "./scheduling.ts";
export * from "./reconcile.ts";
