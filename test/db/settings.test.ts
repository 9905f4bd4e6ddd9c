import { describe, expect, it } from "vitest";
import { configFromEnv, isLeaseError } from "../../src/core/index.ts";
import { settingsFromEnv } from "../../src/db/config.ts";

const URL = "postgres://app:Settings-Secret@127.0.0.1:5432/app";

function failure(env: Record<string, string>): { code: string; message: string } {
  try {
    settingsFromEnv({ DATABASE_URL: URL, ...env });
  } catch (error) {
    if (isLeaseError(error)) return { code: error.code, message: error.message };
    throw error;
  }
  return { code: "accepted", message: "" };
}

describe("settings parsed once", () => {
  it("reads every LEASE_* and database variable into one object, with the defaults for unset ones", () => {
    const settings = settingsFromEnv({
      DATABASE_URL: URL,
      LEASE_POOL: "reports",
      LEASE_LIMIT: "12",
      LEASE_SHARDS: "3",
      LEASE_BLOCK: "4",
      LEASE_LOCATION_HINT: " weur ",
      LEASE_RESERVED: "2",
      LEASE_CLAIM_MS: "250",
      LEASE_RELEASE_CARRY_MS: "10",
      LEASE_LOCAL_SHED: "2",
      DB_CONNECT_TIMEOUT_MS: "1500",
    });
    expect(settings.pool).toEqual({
      name: "reports",
      config: {
        limit: 12,
        maxQueue: 1000,
        waitMs: 5000,
        leaseTtlMs: 1500,
        reserved: 2,
        batchMax: undefined,
        adaptive: undefined,
        queue: "adaptive",
      },
      shards: 3,
      blockMax: 4,
      blockIdleMs: 20,
      locationHint: "weur",
      claimMs: 250,
      carryMs: 10,
      localShed: 2,
      coordinator: true,
      learn: null,
      enforce: null,
    });
    expect(settings.database).toMatchObject({
      environment: "local",
      driver: "postgres",
      connectTimeoutMs: 1500,
      deadlineMs: 10_000,
    });
    expect(settingsFromEnv({ DATABASE_URL: URL, COORDINATOR: "off" }).pool).toMatchObject({
      name: "main",
      shards: 1,
      blockMax: 0,
      claimMs: undefined,
      carryMs: 5,
      localShed: 1.5,
      coordinator: false,
    });
    // `[vars]` may hold numbers, and a Worker may bind its coordinator namespace as `COORDINATOR`.
    const bound = { DATABASE_URL: URL, LEASE_LIMIT: 4, COORDINATOR: { getByName() {} } } as unknown as Record<
      string,
      string
    >;
    expect(settingsFromEnv(bound).pool).toMatchObject({ config: { limit: 4 }, coordinator: true });
  });

  it("parses once per env object: the same object again is a lookup, a new one is parsed", () => {
    const env = { DATABASE_URL: URL, LEASE_LIMIT: "7" };
    const first = settingsFromEnv(env);
    expect(settingsFromEnv(env)).toBe(first);
    expect(settingsFromEnv({ ...env })).not.toBe(first);
    expect(settingsFromEnv({ ...env })).toEqual(first);
    // The Durable Object's configuration is the same parse.
    expect(configFromEnv(env)).toEqual(first.pool.config);
  });

  it.each([
    ["LEASE_LIMIT", { LEASE_LIMIT: "0" }, "an integer from 1 to 10000"],
    ["LEASE_LIMIT", { LEASE_LIMIT: "1e3" }, "an integer from 1 to 10000"],
    ["LEASE_WAIT_MS", { LEASE_WAIT_MS: "-5" }, "an integer from 0 to 600000"],
    ["LEASE_TTL_MS", { LEASE_TTL_MS: "0" }, "an integer from 1 to"],
    ["LEASE_RESERVED", { LEASE_LIMIT: "4", LEASE_RESERVED: "4" }, "an integer from 0 to 3"],
    ["LEASE_BATCH_MAX", { LEASE_LIMIT: "4", LEASE_BATCH_MAX: "5" }, "an integer from 0 to 4"],
    ["LEASE_ADAPTIVE", { LEASE_ADAPTIVE: "yes" }, "`on` or `off`"],
    [
      "LEASE_ADAPTIVE_FLOOR",
      { LEASE_LIMIT: "4", LEASE_ADAPTIVE: "on", LEASE_ADAPTIVE_FLOOR: "5" },
      "an integer from 1 to 4",
    ],
    ["LEASE_SHARDS", { LEASE_LIMIT: "3", LEASE_SHARDS: "4" }, "an integer from 1 to 3"],
    ["LEASE_BLOCK", { LEASE_BLOCK: "x" }, "an integer from 0 to 1000"],
    ["LEASE_BLOCK_IDLE_MS", { LEASE_BLOCK_IDLE_MS: "60001" }, "an integer from 0 to 60000"],
    ["LEASE_CLAIM_MS", { LEASE_CLAIM_MS: "1501" }, "an integer from 0 to 1500"],
    ["LEASE_RELEASE_CARRY_MS", { LEASE_RELEASE_CARRY_MS: "1001" }, "an integer from 0 to 1000"],
    ["LEASE_ENFORCE", { LEASE_ENFORCE: "kill" }, "`off` or `terminate`"],
    ["LEASE_ENFORCE_GRACE_MS", { LEASE_ENFORCE: "terminate", LEASE_ENFORCE_GRACE_MS: "-1" }, "an integer from 0 to"],
    ["APPLICATION_NAME", { LEASE_ENFORCE: "terminate", APPLICATION_NAME: "a".repeat(55) }, "at most 54 bytes"],
    ["DB_CONNECT_TIMEOUT_MS", { DB_CONNECT_TIMEOUT_MS: "50" }, "an integer from 100 to 120000"],
    ["DB_DEADLINE_MS", { DB_DEADLINE_MS: "ten" }, "an integer from 100 to 600000"],
  ])("names %s in its INVALID_CONFIG message, as the operator spelled it", (name, env, expected) => {
    const { code, message } = failure(env);
    expect(code).toBe("INVALID_CONFIG");
    expect(message).toContain(`\`${name}\``);
    expect(message).toContain(expected);
    expect(message).not.toContain("Settings-Secret");
  });
});
