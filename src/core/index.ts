export * from "./config.ts";
export * from "./errors.ts";
export * from "./histogram.ts";
export * from "./pool.ts";
export * from "./protocol.ts";
export * from "./reconcile.ts";
