// What `wrangler types` would generate: the bindings of `env` and the main module of `exports`.
type OrmEnv = import("leasegate/workers").WorkerPoolEnv;

declare namespace Cloudflare {
  interface Env extends OrmEnv {}
  interface GlobalProps {
    mainModule: typeof import("../src/kysely-worker.ts");
  }
}
