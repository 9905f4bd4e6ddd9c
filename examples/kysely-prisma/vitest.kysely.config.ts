import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

// The Kysely Worker in real workerd: the coordinator Durable Object, Hyperdrive's local mode to a real
// Postgres (EXAMPLE_DATABASE_URL; it needs a password in the URL), a small pool to overload.
export default defineConfig({
  test: { include: ["test/kysely.test.ts"], testTimeout: 30_000 },
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.kysely.toml" },
      miniflare: {
        hyperdrives: {
          HYPERDRIVE: process.env.EXAMPLE_DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/postgres",
        },
        bindings: {
          LEASE_LIMIT: "2",
          LEASE_MAX_QUEUE: "20",
          LEASE_WAIT_MS: "3000",
          APPLICATION_NAME: "kysely-example",
        },
      },
    }),
  ],
});
