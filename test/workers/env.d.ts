type LeasegateWorkerEnv = import("../../examples/pitches/src/worker.ts").Env;

declare namespace Cloudflare {
  interface Env extends LeasegateWorkerEnv {}
  interface GlobalProps {
    mainModule: typeof import("../../examples/pitches/src/worker.ts");
  }
}
