import { spawnSync } from "node:child_process";
import { join } from "node:path";

const root = join(import.meta.dirname, "..", "..");

/**
 * Runs `prisma generate` on test/orm/schema.prisma: a client for Node and one for workerd under
 * test-artifacts/prisma/. Generating needs no engine binary (Prisma 7 generates with WebAssembly),
 * but the CLI first makes sure the schema engine (for migrations) is downloaded from
 * binaries.prisma.sh, which this machine cannot reach; `PRISMA_SCHEMA_ENGINE_BINARY` names a file
 * to use instead, and `generate` never runs it.
 *
 * @example
 * generatePrismaClients(); const { PrismaClient } = await import("../../test-artifacts/prisma/node/client.ts");
 */
export function generatePrismaClients(): void {
  const result = spawnSync(
    join(root, "node_modules", ".bin", "prisma"),
    ["generate", "--schema", "test/orm/schema.prisma"],
    {
      cwd: root,
      encoding: "utf8",
      timeout: 120_000,
      env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: "/bin/false", PRISMA_HIDE_UPDATE_MESSAGE: "1" },
    },
  );
  if (result.status !== 0) throw new Error(`prisma generate failed:\n${result.stdout}\n${result.stderr}`);
}
