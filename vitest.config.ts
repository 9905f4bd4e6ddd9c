import { defineConfig } from "vitest/config";

// Plain Node tests: the pure core and the local adapter against the real Postgres.
export default defineConfig({
  test: {
    include: ["test/core/**/*.test.ts", "test/local/**/*.test.ts"],
  },
});
