import { LeaseError } from "../core/errors.ts";
import type { DatabaseConfig } from "./config.ts";
import { type Driver, type DriverModule, type NeonOptions, bindDriver } from "./driver.ts";

// The Node and Deno side of the drivers: loading one by name with a dynamic import. Workers never
// import this file (a bundler resolves and may inline every driver a dynamic import names); they
// get `bindDriver` and the types from `driver.ts`.
export * from "./driver.ts";

/** The npm package behind each driver name of a configuration. */
export const DRIVER_PACKAGES = {
  hyperdrive: "postgres",
  postgres: "postgres",
  pg: "pg",
  neon: "@neondatabase/serverless",
} as const;

/**
 * Loads the driver a configuration names (`DATABASE_CLIENT`, a Neon host) by dynamic import: for
 * Node and Deno, where nothing is bundled. A driver package that is not installed fails here, at
 * start, with `INVALID_CONFIG` and one line naming the package to install. Workers pass their
 * driver instead (`leasegate/postgres`, `leasegate/pg`, `leasegate/neon`): a bundler would inline
 * every driver a dynamic import names.
 *
 * @example
 * const driver = await loadDriver(databaseConfig(process.env));
 */
export async function loadDriver(config: DatabaseConfig, neon: NeonOptions = {}): Promise<DriverModule> {
  const packageName = DRIVER_PACKAGES[config.driver];
  try {
    if (packageName === "pg") {
      const [{ pgDriver }, pg] = await Promise.all([import("./drivers/node-postgres.ts"), import("pg")]);
      return pgDriver(pg.default);
    }
    if (packageName === "@neondatabase/serverless") {
      const [{ neonDriver }, module] = await Promise.all([
        import("./drivers/neon.ts"),
        import("@neondatabase/serverless"),
      ]);
      return neonDriver(module, neon);
    }
    const [{ postgresJsDriver }, postgres] = await Promise.all([
      import("./drivers/postgres-js.ts"),
      import("postgres"),
    ]);
    return postgresJsDriver(postgres.default);
  } catch (error) {
    throw missingDriver(packageName, error);
  }
}

/**
 * The error of a driver package that is not installed: `INVALID_CONFIG`, naming the package.
 * Any other failure while loading is returned as it came.
 */
export function missingDriver(packageName: string, error: unknown): unknown {
  const e = error as { code?: unknown; message?: unknown } | null;
  const notFound =
    e?.code === "ERR_MODULE_NOT_FOUND" ||
    e?.code === "MODULE_NOT_FOUND" ||
    /Cannot find (module|package)|not found/i.test(String(e?.message ?? ""));
  if (!notFound || !String(e?.message ?? "").includes(packageName)) return error;
  return new LeaseError(
    "INVALID_CONFIG",
    `The database driver \`${packageName}\` is not installed: run \`npm install ${packageName}\``,
    { cause: error },
  );
}

/**
 * The driver for a configuration, loaded on the first `connect()` (see {@link loadDriver}): for
 * Node and Deno tools and tests. Every driver opens exactly one connection per `connect()`, and
 * its `close()` resolves once that connection is gone.
 *
 * @example
 * const driver = openDriver(databaseConfig(process.env));
 * const conn = await driver.connect();
 * try { await conn.query("SELECT 1") } finally { await conn.close() }
 */
export function openDriver(config: DatabaseConfig, neon: NeonOptions = {}): Driver {
  let loading: Promise<Driver> | undefined;
  const name = config.driver === "hyperdrive" ? "postgres" : config.driver;
  return {
    name,
    async connect(limits) {
      loading ??= loadDriver(config, neon).then((module) => bindDriver(module, config));
      return (await loading).connect(limits);
    },
  };
}
