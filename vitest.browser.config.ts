import { defineConfig } from "vitest/config";

// The dashboard in a real headless Chromium, served by a real `wrangler dev` (workerd, the Durable
// Object, Hyperdrive's local mode into the test database) while load runs.
export default defineConfig({
  test: {
    include: ["test/browser/**/*.test.ts"],
    testTimeout: 40_000,
    hookTimeout: 30_000,
  },
});
