import { defineConfig } from "vitest/config";

// Plain Node tests: the pure core and the local adapter against the real Postgres.
export default defineConfig({
  test: {
    include: ["test/core/**/*.test.ts", "test/local/**/*.test.ts"],
    // The local tests run OS processes under load; files take turns so timed tests keep their CPU.
    fileParallelism: false,
  },
});
