import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      miniflare: {
        hyperdrives: {
          HYPERDRIVE: process.env.EXAMPLE_DATABASE_URL ?? "postgres://postgres:example@127.0.0.1:5432/postgres",
        },
        // The coordinator Worker as `wrangler deploy --dry-run` bundles it (`npm run build:coordinator`).
        workers: [
          {
            name: "leasegate-coordinator",
            modules: true,
            scriptPath: "./coordinator/dist/index.js",
            compatibilityDate: "2026-11-01",
            compatibilityFlags: ["nodejs_compat"],
            bindings: { LEASE_LIMIT: "2", LEASE_WAIT_MS: "2000" },
            durableObjects: { COORDINATOR: { className: "ConnectionCoordinator", useSQLite: true } },
          },
        ],
      },
    }),
  ],
});
