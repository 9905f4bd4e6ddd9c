import { LeaseError } from "../core/errors.ts";
import type { DatabaseConfig } from "./config.ts";
import { DRIVER_PACKAGES, type Driver, type DriverModule, type DriverName, bindDriver } from "./driver.ts";

// The Node, Deno and Bun side of the drivers: loading one by name with a dynamic import. Workers
// never import this file (a bundler resolves and may inline every driver a dynamic import names);
// they pass their driver and get `bindDriver` and the types from `driver.ts`.
export * from "./driver.ts";

/**
 * A driver's package entry (`src/drivers/<name>.ts`): it exports its driver, configurable, as `driver`.
 *
 * @example
 * const { driver }: DriverEntry = await import("../drivers/pg.ts");
 */
export interface DriverEntry {
  readonly driver: DriverModule & ((options: never) => DriverModule);
}

/**
 * For each driver name, how to load its package entry.
 *
 * @example
 * const registry: DriverRegistry<"pg"> = { pg: () => import("../drivers/pg.ts") };
 */
export type DriverRegistry<Names extends string> = { readonly [N in Names]: () => Promise<DriverEntry> };

/**
 * How each of leasegate's drivers is loaded for `DATABASE_CLIENT`: its package entry, imported
 * when named. One line per driver; the compiler checks that every name of {@link DRIVER_PACKAGES}
 * has one, that there is none besides, and that each entry exports a configurable `driver`.
 *
 * @example
 * const { driver } = await DRIVERS.pg();
 */
export const DRIVERS: DriverRegistry<DriverName> = {
  postgres: () => import("../drivers/postgres.ts"),
  pg: () => import("../drivers/pg.ts"),
  neon: () => import("../drivers/neon.ts"),
  bun: () => import("../drivers/bun.ts"),
};

/**
 * Loads the driver a configuration names (`DATABASE_CLIENT`, a Neon host) by dynamic import of its
 * entry, with `options` of its client library (see {@link DriverModule}): for Node, Deno and Bun,
 * where nothing is bundled. A driver package that is not installed fails here, at start, with
 * `INVALID_CONFIG` and one line naming the package to install. Workers pass their driver instead
 * (`leasegate/postgres`, `leasegate/pg`, `leasegate/neon`): a bundler would inline every driver a
 * dynamic import names.
 *
 * @example
 * const driver = await loadDriver(databaseConfig(process.env));
 */
export async function loadDriver(config: DatabaseConfig, options?: object): Promise<DriverModule> {
  const name = config.driver as DriverName;
  const load = DRIVERS[name];
  if (!load) throw new LeaseError("INVALID_CONFIG", `No driver is named \`${String(name)}\``);
  try {
    const { driver } = await load();
    return options ? driver(options as never) : driver;
  } catch (error) {
    throw missingDriver(DRIVER_PACKAGES[name], error);
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
 * The driver for a configuration, loaded on the first `connect()` (see {@link loadDriver}), with
 * `options` of its client library: for Node and Deno tools and tests. Every driver opens exactly
 * one connection per `connect()`, and its `close()` resolves once that connection is gone.
 *
 * @example
 * const driver = openDriver(databaseConfig(process.env));
 * const conn = await driver.connect();
 * try { await conn.query("SELECT 1") } finally { await conn.close() }
 */
export function openDriver(config: DatabaseConfig, options?: object): Driver {
  let loading: Promise<Driver> | undefined;
  return {
    name: config.driver,
    async connect(limits) {
      loading ??= loadDriver(config, options).then((module) => bindDriver(module, config));
      return (await loading).connect(limits);
    },
  };
}
