import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";
import { FAULT_CONTROL_PORT, FAULT_PG_PORT } from "./test/faults/private-postgres.ts";

// Fault injection against a private Postgres cluster (see test/faults/private-postgres.ts): real
// workerd, the real Durable Object, Hyperdrive's local mode pointed at a server the tests restart.
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    globalSetup: ["test/faults/private-postgres.ts"],
    testTimeout: 30_000,
  },
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      miniflare: {
        hyperdrives: { HYPERDRIVE: `postgres://postgres:leasegate@127.0.0.1:${FAULT_PG_PORT}/postgres` },
        bindings: {
          LEASE_POOL: "main",
          LEASE_LIMIT: "3",
          LEASE_WAIT_MS: "2000",
          LEASE_TTL_MS: "30000",
          LEASE_MAX_QUEUE: "20",
          DEBUG_TOKEN: "test-token",
          APPLICATION_NAME: "leasegate-faults",
          FAULT_CONTROL_URL: `http://127.0.0.1:${FAULT_CONTROL_PORT}`,
        },
      },
    }),
  ],
});
