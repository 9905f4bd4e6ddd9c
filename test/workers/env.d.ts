declare namespace Cloudflare {
  interface Env extends import("../../src/worker.ts").Env {}
  interface GlobalProps {
    mainModule: typeof import("../../src/worker.ts");
  }
}
