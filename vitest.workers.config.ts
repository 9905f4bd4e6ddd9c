import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

// Real workerd, the real Durable Object with SQLite storage, Hyperdrive's local mode pointed at a
// real Postgres. `npm test` creates and migrates the test database and sets the URL.
const databaseUrl =
  process.env.LEASEGATE_TEST_HYPERDRIVE_URL ?? "postgres://postgres:leasegate@127.0.0.1:5432/leasegate_test";

export default defineConfig({
  test: {
    include: ["test/limit/workerd/**/*.test.ts", "test/workers/**/*.test.ts"],
    testTimeout: 20_000,
    // A TCP server that accepts and never answers, for connect timeouts (`inject("silentPort")`).
    globalSetup: ["test/workers/silent-server.ts"],
  },
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      miniflare: {
        hyperdrives: { HYPERDRIVE: databaseUrl },
        bindings: {
          LEASE_POOL: "main",
          LEASE_LIMIT: "3",
          LEASE_WAIT_MS: "400",
          LEASE_TTL_MS: "30000",
          LEASE_MAX_QUEUE: "5",
          // The contract's config (test/contract/backend.ts): cases that want the adaptive queue ask for it.
          LEASE_QUEUE: "fifo",
          DEBUG_TOKEN: "test-token",
          APPLICATION_NAME: process.env.LEASEGATE_TEST_APP_NAME ?? "leasegate-test",
        },
      },
    }),
  ],
});
