import { defineConfig } from "vitest/config";

// Plain Node tests: the pure core and the local adapter against the real Postgres.
export default defineConfig({
  // The example app imports the package by its name; `source` resolves it to the TypeScript here.
  resolve: { conditions: ["source"] },
  ssr: { resolve: { conditions: ["source"], externalConditions: ["source"] } },
  test: {
    include: [
      "test/core/**/*.test.ts",
      "test/db/**/*.test.ts",
      "test/hono/**/*.test.ts",
      "test/limit/*.test.ts",
      "test/local/**/*.test.ts",
      "test/orm/**/*.test.ts",
      "test/package/**/*.test.ts",
      "test/security/**/*.test.ts",
      "test/start/**/*.test.ts",
    ],
    // The local tests run OS processes under load; files take turns so timed tests keep their CPU.
    fileParallelism: false,
  },
});
