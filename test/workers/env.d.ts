type LeasegateWorkerEnv = import("../../src/worker.ts").Env;

declare namespace Cloudflare {
  interface Env extends LeasegateWorkerEnv {}
  interface GlobalProps {
    mainModule: typeof import("../../src/worker.ts");
  }
}
