// What `wrangler types` would generate: the bindings of `env` and the main module of `exports`.
type NotesEnv = import("../src/index.ts").Env;

declare namespace Cloudflare {
  interface Env extends NotesEnv {}
  interface GlobalProps {
    mainModule: typeof import("../src/index.ts");
  }
}
