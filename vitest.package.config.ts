import { defineConfig } from "vitest/config";
import node from "./vitest.config.ts";

// The packed package (test/package) with the node suite's settings: `npm test` runs it apart from the
// node suite, beside the suites after it (scripts/test.ts).
export default defineConfig({ ...node, test: { ...node.test, include: ["test/package/**/*.test.ts"] } });
