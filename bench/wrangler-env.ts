/**
 * What the benches add to the environment of every `wrangler dev` they start. By default wrangler
 * dev attaches a local trace collector (a streaming tail Worker) to the Workers and Durable Objects
 * it runs, on the same workerd thread: every request and every Durable Object call then also
 * produces trace events for it, which cost about as much again as a no-op call. Production has no
 * such collector unless one is configured, so the benches run without it (bench/overload.sh does
 * the same for `npm start`).
 *
 * @example
 * spawn("wrangler", ["dev"], { env: { ...process.env, ...WRANGLER_BENCH_ENV } });
 */
export const WRANGLER_BENCH_ENV = { X_LOCAL_OBSERVABILITY: "false" } as const;
