import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { localPool } from "../../local/pool.ts";
import { isLeaseError } from "../../src/core/index.ts";
import { databaseConfig } from "../../src/db/config.ts";
import {
  DRIVERS,
  type DriverModule,
  DRIVER_PACKAGES,
  bindDriver,
  defineDriver,
  loadDriver,
} from "../../src/db/connect.ts";
import { driver as postgresDriver } from "../../src/drivers/postgres.ts";
import { forgetPools } from "../local/helpers.ts";
import { TEST_URL } from "./helpers.ts";

// The driver registry: every driver of leasegate's own in the places a driver must be, the same
// checks for each, and a trial driver that plugs in by the interface alone — against the real
// Postgres of `npm test`, watched in pg_stat_activity.
const root = join(import.meta.dirname, "..", "..");
const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const build = JSON.parse(readFileSync(join(root, "tsconfig.build.json"), "utf8")) as { include: string[] };
const admin = postgres(TEST_URL, { max: 2, onnotice: () => {} });
const base = `drivers-${process.pid}-${Date.now()}`;
afterAll(async () => {
  await forgetPools(admin, `${base}-%`);
  await admin.end();
});

const backends = async (app: string) =>
  Number((await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${app}`)[0]!.n);
const target = (app: string) => ({
  connectionString: TEST_URL,
  applicationName: app,
  connectTimeoutMs: 5000,
  edge: false,
});
const names = Object.keys(DRIVERS) as Array<keyof typeof DRIVERS>;
// Drivers that open a plain TCP connection under Node (Neon needs its WebSocket proxy: test/db/neon.test.ts; Bun: test/bun/).
const ON_NODE = ["postgres", "pg"] as const;

describe("the driver registry", () => {
  it.each(names)("%s: loads by name, and has its export, its build entry and its peer dependency", async (name) => {
    const { driver } = await DRIVERS[name]();
    expect(driver.name).toBe(name);
    expect(driver.packageName).toBe(DRIVER_PACKAGES[name]);
    // Configurable: called with options, the same driver.
    expect(driver({} as never)).toMatchObject({ name, packageName: DRIVER_PACKAGES[name] });
    expect(() => driver("prepare=false" as never)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", message: expect.stringContaining(`${name} driver options`) }),
    );
    expect(manifest.exports[`./${name}`]).toEqual({
      source: `./src/drivers/${name}.ts`,
      types: `./dist/src/drivers/${name}.d.ts`,
      workerd: `./src/drivers/${name}.ts`,
      default: `./dist/src/drivers/${name}.js`,
    });
    expect(existsSync(join(root, "src", "drivers", `${name}.ts`))).toBe(true);
    expect(build.include).toContain(`src/drivers/${name}.ts`);
    // Bun's driver is the runtime's own; every other is the app's package, never leasegate's dependency.
    if (name !== "bun") expect(manifest.peerDependenciesMeta[DRIVER_PACKAGES[name]]).toEqual({ optional: true });
  });

  it("has an entry in src/drivers/ for every name and a name for every entry", async () => {
    const { readdirSync } = await import("node:fs");
    const entries = readdirSync(join(root, "src", "drivers")).map((f) => f.replace(/\.ts$/, ""));
    expect(entries.sort()).toEqual([...names].sort());
  });

  it("DATABASE_CLIENT loads the driver it names, with options passed through; an unknown name is INVALID_CONFIG listing the names", async () => {
    const loaded = await loadDriver(databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "pg" }));
    expect(loaded.name).toBe("pg");
    const app = `${base}-client`;
    // node-postgres's own option, through DATABASE_CLIENT's loading: `statement_timeout` of the Client config.
    const withOptions = await loadDriver(databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "pg" }), {
      statement_timeout: 1234,
    });
    const conn = await withOptions.connect(target(app));
    try {
      expect(await conn.query("SELECT current_setting('statement_timeout') AS t")).toEqual([{ t: "1234ms" }]);
    } finally {
      await conn.close();
    }
    expect(await backends(app)).toBe(0);
    let error: unknown;
    try {
      databaseConfig({ DATABASE_URL: TEST_URL, DATABASE_CLIENT: "mysql" });
    } catch (e) {
      error = e;
    }
    expect(isLeaseError(error) && error.code).toBe("INVALID_CONFIG");
    expect(String((error as Error).message)).toContain("`postgres`, `pg`, `neon`, `bun`");
  });

  it("the bun driver outside Bun fails to connect with INVALID_CONFIG saying so", async () => {
    const { driver } = await DRIVERS.bun();
    await expect(driver.connect(target(`${base}-bun`))).rejects.toMatchObject({
      code: "INVALID_CONFIG",
      message: expect.stringContaining("Bun only"),
    });
  });

  it("postgres.js options pass through: `prepare: false` leaves no prepared statement on the connection", async () => {
    const count = async (driver: DriverModule<postgres.Sql>, app: string) => {
      const conn = await driver.connect(target(app));
      try {
        await conn.client`SELECT ${1}::int AS one`;
        const [row] = await conn.client`SELECT count(*)::int AS n FROM pg_prepared_statements`;
        return row!.n as number;
      } finally {
        await conn.close();
      }
    };
    expect(await count(postgresDriver, `${base}-prepared`)).toBeGreaterThan(0);
    expect(await count(postgresDriver({ prepare: false }), `${base}-unprepared`)).toBe(0);
  });

  describe.each(ON_NODE)("%s, the checks every driver passes", (name) => {
    it("queries with $n parameters, cancels a running statement (57014), and is gone from pg_stat_activity once closed", async () => {
      const { driver } = await DRIVERS[name]();
      const app = `${base}-${name}`;
      const conn = await driver.connect(target(app));
      try {
        expect(await conn.query("SELECT $1::int + 1 AS n", [41])).toEqual([{ n: 42 }]);
        const sleeping = conn.query("SELECT pg_sleep(5)").then(
          () => "finished",
          (e: { code?: string }) => e.code,
        );
        await expect
          .poll(async () =>
            Number(
              (
                await admin`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${app} AND state = 'active'`
              )[0]!.n,
            ),
          )
          .toBe(1);
        await conn.cancel();
        expect(await sleeping).toBe("57014");
        expect(await backends(app)).toBe(1);
      } finally {
        await conn.close();
      }
      // The server's backend exits right after the client's socket closed.
      await expect.poll(() => backends(app)).toBe(0);
      // close() is idempotent and never throws.
      await conn.close();
    });

    it("sends the session limits as startup parameters and tags the lease in application_name", async () => {
      const { driver } = await DRIVERS[name]();
      const app = `${base}-${name}-limits`;
      const bound = bindDriver(driver, databaseConfig({ DATABASE_URL: TEST_URL, APPLICATION_NAME: app }));
      const conn = await bound.connect({ statementTimeoutMs: 700, leaseId: "0123456789abcdef" });
      try {
        expect(
          await conn.query(
            "SELECT current_setting('statement_timeout') AS t, current_setting('application_name') AS a",
          ),
        ).toEqual([{ t: "700ms", a: `${app}/01234567` }]);
      } finally {
        await conn.close();
      }
    });
  });
});

describe("a trial driver", () => {
  it("plugs into localPool by the interface alone: its options arrive, every connection is closed before its slot goes back", async () => {
    const events: string[] = [];
    const app = `${base}-trial`;
    // The trial driver: postgres.js underneath, its own option (`label`) and every open and close noted.
    const trial = defineDriver({
      name: "trial",
      packageName: "postgres",
      async connect(target, options: { label?: string }) {
        const conn = await postgresDriver.connect(target);
        events.push(`open ${options.label ?? "-"}`);
        return {
          ...conn,
          close: async () => {
            await conn.close();
            events.push(`closed ${options.label ?? "-"}`);
          },
        };
      },
    });
    const pool = await localPool(
      { DATABASE_URL: TEST_URL, LEASE_POOL: `${base}-trial`, LEASE_LIMIT: "1", APPLICATION_NAME: app },
      { driver: trial({ label: "t1" }) },
    );
    try {
      const [during, rows] = await Promise.all([
        pool.db.query<{ n: number }>("SELECT 1 AS n"),
        pool.sql((sql) => sql`SELECT 2 AS n`),
      ]);
      expect(during).toEqual([{ n: 1 }]);
      expect([...rows]).toEqual([{ n: 2 }]);
      // Limit 1: the second lease is granted only after the first connection closed.
      expect(events).toEqual(["open t1", "closed t1", "open t1", "closed t1"]);
      expect((await pool.leases!.stats()).held).toBe(0);
      expect(await backends(app)).toBe(0);
    } finally {
      await pool.close();
    }
  });

  it("names what a driver forgot: tsc over test/types/trial-driver.ts without its @ts-expect-error directives", () => {
    const source = readFileSync(join(root, "test", "types", "trial-driver.ts"), "utf8");
    const probe = `.probe-${process.pid}`;
    const dir = join(root, "test", "types");
    writeFileSync(join(dir, `${probe}.ts`), source.replace(/\/\/ @ts-expect-error (FORGOT-[A-Z-]+).*/g, "// $1"));
    writeFileSync(
      join(dir, `${probe}.json`),
      JSON.stringify({ extends: "../../tsconfig.json", include: [], files: [`${probe}.ts`] }),
    );
    let output: string;
    try {
      const tsc = spawnSync(
        join(root, "node_modules", ".bin", "tsc"),
        ["-p", join(dir, `${probe}.json`), "--pretty", "false"],
        {
          encoding: "utf8",
          timeout: 120_000,
        },
      );
      output = `${tsc.stdout}${tsc.stderr}`;
    } finally {
      rmSync(join(dir, `${probe}.ts`), { force: true });
      rmSync(join(dir, `${probe}.json`), { force: true });
    }
    // Each marker: the error on the line after it, and the words that name what was forgotten.
    const expected: Record<string, string> = {
      "FORGOT-OPTION-TYPE": "'prepare' does not exist in type 'TrialOptions'",
      "FORGOT-CANCEL": "Property 'cancel' is missing",
      "FORGOT-PACKAGE": "Property 'packageName' is missing",
      "FORGOT-LINE": "Property 'trial' is missing",
      "FORGOT-NAME": "'trial' does not exist in type 'DriverRegistry",
      "FORGOT-EXPORT": "Property 'driver' is missing",
      "FORGOT-DEFINE": "provides no match for the signature '(options: never)",
    };
    const lines = source.split("\n");
    const errors = [...output.matchAll(/\.probe-\d+\.ts\((\d+),\d+\): error (TS\d+: [^\n]*(?:\n {2,}[^\n]*)*)/g)].map(
      (m) => ({ line: Number(m[1]), text: m[2]! }),
    );
    for (const [marker, words] of Object.entries(expected)) {
      const at = lines.findIndex((l) => l.includes(`@ts-expect-error ${marker}`)) + 1;
      expect(at, marker).toBeGreaterThan(0);
      const error = errors.find((e) => e.line === at + 1);
      expect(error?.text, `${marker} at line ${at + 1}\n${output}`).toContain(words);
    }
    // Nothing else fails: the trial driver done right compiles.
    expect(errors).toHaveLength(Object.keys(expected).length);
  }, 150_000);
});
