import { describe, expect, it } from "vitest";
import {
  type RoomTerms,
  configFromEnv,
  learnSettingsFromEnv,
  learnedLimit,
  limitSource,
} from "../../src/core/index.ts";

/** A server with plenty of room: 100 slots, 3 for superusers, nobody else connected. */
const base: RoomTerms = {
  maxConnections: 100,
  superuserReserved: 3,
  reserved: null,
  roleLimit: null,
  databaseLimit: null,
  othersOnServer: 0,
  othersOfRole: 0,
  othersInDatabase: 0,
  headroom: 2,
  limitMax: null,
};

describe("learnedLimit", () => {
  const cases: Array<[string, Partial<RoomTerms>, { limit: number; room: number; bound: string; starved?: boolean }]> =
    [
      ["the server alone: max − superuser reserved − headroom", {}, { limit: 95, room: 97, bound: "server" }],
      ["PG16 reserved_connections are taken off too", { reserved: 5 }, { limit: 90, room: 92, bound: "server" }],
      ["others on the server take room", { othersOnServer: 40 }, { limit: 55, room: 57, bound: "server" }],
      ["a role's CONNECTION LIMIT 12", { roleLimit: 12 }, { limit: 10, room: 12, bound: "role" }],
      [
        "4 connections of the role under another name lower it by 4",
        { roleLimit: 12, othersOfRole: 4, othersOnServer: 4 },
        { limit: 6, room: 8, bound: "role" },
      ],
      ["rolconnlimit -1 is no limit", { roleLimit: -1 }, { limit: 95, room: 97, bound: "server" }],
      [
        "the database's limit when tighter than the role's",
        { roleLimit: 30, databaseLimit: 20, othersInDatabase: 5 },
        { limit: 13, room: 15, bound: "database" },
      ],
      [
        "the role's when tighter than the database's",
        { roleLimit: 10, databaseLimit: 20 },
        { limit: 8, room: 10, bound: "role" },
      ],
      [
        "a tie between role and server names the role",
        { maxConnections: 15, roleLimit: 12 },
        { limit: 10, room: 12, bound: "role" },
      ],
      [
        "LEASE_LIMIT_MAX caps it (Hyperdrive's origin limit)",
        { limitMax: 20 },
        { limit: 20, room: 97, bound: "limitMax" },
      ],
      ["a cap above the room changes nothing", { roleLimit: 12, limitMax: 50 }, { limit: 10, room: 12, bound: "role" }],
      ["headroom 0", { roleLimit: 12, headroom: 0 }, { limit: 12, room: 12, bound: "role" }],
      [
        "room of exactly the headroom: the floor of 1, starved",
        { roleLimit: 2 },
        { limit: 1, room: 2, bound: "role", starved: true },
      ],
      [
        "no room at all: the floor of 1, starved",
        { maxConnections: 10, othersOnServer: 7 },
        { limit: 1, room: 0, bound: "server", starved: true },
      ],
      [
        "others beyond the limit (room negative): still 1",
        { roleLimit: 5, othersOfRole: 9 },
        { limit: 1, room: -4, bound: "role", starved: true },
      ],
      ["room of headroom + 1: 1, not starved", { roleLimit: 3 }, { limit: 1, room: 3, bound: "role", starved: false }],
    ];
  for (const [name, terms, want] of cases) {
    it(name, () => {
      const r = learnedLimit({ ...base, ...terms }, 1000);
      expect({
        limit: r.limit,
        room: r.room,
        bound: r.bound,
        ...(want.starved === undefined ? {} : { starved: r.starved }),
      }).toEqual(want);
      expect(r.learnedAt).toBe(1000);
      expect(r.terms).toEqual({
        pools: 1,
        poolsOfRole: 1,
        learningOnServer: 0,
        learningOfRole: 0,
        learningInDatabase: 0,
        ...base,
        ...terms,
        roleLimit: (terms.roleLimit ?? 0) < 0 ? null : (terms.roleLimit ?? null),
      });
    });
  }

  it("splits the room among the pools that learn: their connections are their share, not room taken", () => {
    // 100 − 3 reserved − 10 others = 87 for everyone; two pools learn, the other holds 20 of the 30 counted.
    const alone = learnedLimit({ ...base, othersOnServer: 10 }, 0);
    const two = learnedLimit({ ...base, othersOnServer: 30, pools: 2, learningOnServer: 20 }, 0);
    expect(alone).toMatchObject({ server: 87, limit: 85 });
    expect(two).toMatchObject({ server: 43, limit: 41, bound: "server" });
    // However busy the other pool is, this one's share stays: the two never count on the same room.
    const busy = learnedLimit({ ...base, othersOnServer: 60, pools: 2, learningOnServer: 50 }, 0);
    expect(busy.server).toBe(43);
    // Three pools: each a third, rounded down; the limits (before headroom) sum to at most the room.
    const three = learnedLimit({ ...base, othersOnServer: 10, pools: 3 }, 0);
    expect(3 * three.server).toBeLessThanOrEqual(87);
    // The role's room is split among the pools of the role only.
    const role = learnedLimit(
      { ...base, roleLimit: 20, othersOfRole: 4, pools: 3, poolsOfRole: 2, learningOfRole: 4, othersOnServer: 4 },
      0,
    );
    expect(role).toMatchObject({ role: 10, server: 31, bound: "role", limit: 8 });
  });

  it.each([
    ["pools 0", { pools: 0 }],
    ["poolsOfRole 0", { poolsOfRole: 0 }],
    ["learningOnServer above othersOnServer", { othersOnServer: 2, learningOnServer: 3 }],
    ["learningOfRole not a count", { learningOfRole: -1 }],
  ])("refuses %s with INVALID_ARGUMENT", (_, terms) => {
    expect(() => learnedLimit({ ...base, ...terms } as RoomTerms, 0)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
  });

  it("shows each scope's room", () => {
    const r = learnedLimit(
      { ...base, roleLimit: 20, databaseLimit: 50, othersOnServer: 10, othersOfRole: 1, othersInDatabase: 6 },
      0,
    );
    expect({ server: r.server, role: r.role, database: r.database, limit: r.limit }).toEqual({
      server: 87,
      role: 19,
      database: 44,
      limit: 17,
    });
  });

  const bad: Array<[string, Partial<Record<keyof RoomTerms, unknown>>]> = [
    ["maxConnections", { maxConnections: 0 }],
    ["othersOnServer", { othersOnServer: -1 }],
    ["headroom", { headroom: 1.5 }],
    ["limitMax", { limitMax: 0 }],
    ["reserved", { reserved: "5" }],
    ["roleLimit", { roleLimit: Number.NaN }],
  ];
  for (const [field, terms] of bad) {
    it(`refuses a bad ${field} with INVALID_ARGUMENT naming it`, () => {
      expect(() => learnedLimit({ ...base, ...terms } as RoomTerms, 0)).toThrow(
        expect.objectContaining({ code: "INVALID_ARGUMENT", message: expect.stringContaining(`terms.${field}`) }),
      );
    });
  }
});

describe("limitSource", () => {
  const learned = learnedLimit(base, 0);
  it.each([
    [5, learned, "operator"],
    [5, null, "operator"],
    [null, learned, "learned"],
    [null, null, "configured"],
  ] as const)("override %s, learned %s → %s", (override, l, want) => {
    expect(limitSource(override, l)).toBe(want);
  });
});

describe("LEASE_LIMIT=auto settings", () => {
  it("defaults: headroom 2, no cap, every 10 s; the pool starts at 1", () => {
    expect(learnSettingsFromEnv({ LEASE_LIMIT: "auto" })).toEqual({ headroom: 2, limitMax: null, intervalMs: 10_000 });
    expect(configFromEnv({ LEASE_LIMIT: " AUTO " }).limit).toBe(1);
  });
  it("reads LEASE_HEADROOM, LEASE_LIMIT_MAX and LEASE_LEARN_INTERVAL_MS", () => {
    expect(
      learnSettingsFromEnv({
        LEASE_LIMIT: "auto",
        LEASE_HEADROOM: "0",
        LEASE_LIMIT_MAX: "50",
        LEASE_LEARN_INTERVAL_MS: "2000",
      }),
    ).toEqual({
      headroom: 0,
      limitMax: 50,
      intervalMs: 2000,
    });
  });
  it("a fixed limit learns nothing", () => {
    expect(learnSettingsFromEnv({ LEASE_LIMIT: "10", LEASE_HEADROOM: "3" })).toBeNull();
    expect(learnSettingsFromEnv({})).toBeNull();
  });
  it.each([
    [{ LEASE_HEADROOM: "-1" }, "LEASE_HEADROOM"],
    [{ LEASE_LIMIT_MAX: "0" }, "LEASE_LIMIT_MAX"],
    [{ LEASE_LIMIT_MAX: "many" }, "LEASE_LIMIT_MAX"],
    [{ LEASE_LEARN_INTERVAL_MS: "10" }, "LEASE_LEARN_INTERVAL_MS"],
  ])("refuses %j with INVALID_CONFIG naming the variable", (env, name) => {
    expect(() => learnSettingsFromEnv({ LEASE_LIMIT: "auto", ...env })).toThrow(
      expect.objectContaining({ code: "INVALID_CONFIG", message: expect.stringContaining(name) }),
    );
  });
});
