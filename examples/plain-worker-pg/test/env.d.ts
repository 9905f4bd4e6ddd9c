// What `wrangler types` would generate: the bindings of `env` and the main module of `exports`.
type PlainEnv = import("../src/index.ts").Env;

declare namespace Cloudflare {
  interface Env extends PlainEnv {}
  interface GlobalProps {
    mainModule: typeof import("../src/index.ts");
  }
}
