/**
 * `LEASE_LIMIT=auto`: the room the database has for this application, from the terms one short
 * query reads (max_connections, reserved slots, the role's and the database's `CONNECTION LIMIT`,
 * the connections others hold now). Pure: the shell runs the query and passes the terms.
 */
import { ErrorCodes, LeaseError, expected } from "./errors.ts";
import type { Failure, Result } from "./protocol.ts";

/** What the learning query read, plus the two settings that shape the result. */
export interface RoomTerms {
  /** `max_connections`. */
  readonly maxConnections: number;
  /** `superuser_reserved_connections`. */
  readonly superuserReserved: number;
  /** `reserved_connections` (Postgres 16+), null where the server has no such setting. */
  readonly reserved: number | null;
  /** The role's `CONNECTION LIMIT` (`pg_roles.rolconnlimit`); null or -1: none. */
  readonly roleLimit: number | null;
  /** The database's `CONNECTION LIMIT` (`pg_database.datconnlimit`); null or -1: none. */
  readonly databaseLimit: number | null;
  /** Client connections on the whole server that are not this application's. */
  readonly othersOnServer: number;
  /** Those of them opened by the same role (a role's limit counts the whole server). */
  readonly othersOfRole: number;
  /** Those of them connected to the same database, any role. */
  readonly othersInDatabase: number;
  /**
   * Pools that learn their limit on this database now, this one included (`leasegate_learners`):
   * the room is split among them equally. Absent: 1.
   */
  readonly pools?: number | undefined;
  /** Of `pools`, those connected as the same role: the role's room is split among them. Absent: 1. */
  readonly poolsOfRole?: number | undefined;
  /** Of `othersOnServer`, the connections of the other pools that learn (their part of the room). Absent: 0. */
  readonly learningOnServer?: number | undefined;
  /** Of `othersOfRole`, those of the other pools that learn. Absent: 0. */
  readonly learningOfRole?: number | undefined;
  /** Of `othersInDatabase`, those of the other pools that learn. Absent: 0. */
  readonly learningInDatabase?: number | undefined;
  /** Slots kept free below the room (`LEASE_HEADROOM`). */
  readonly headroom: number;
  /** Never learn more than this (`LEASE_LIMIT_MAX`), null: no cap. */
  readonly limitMax: number | null;
}

/**
 * What one reading of the database gives: the terms without the pool's own caps. Whoever reads
 * them (a Worker through Hyperdrive, a process on its own client) hands these to the coordinator,
 * which adds `LEASE_HEADROOM` and `LEASE_LIMIT_MAX` from its own settings: a caller cannot raise
 * a pool's cap.
 */
export type RoomCounts = Omit<RoomTerms, "headroom" | "limitMax">;

/** What a pool with a fixed limit answers a learning (`INVALID_ARGUMENT`). */
export const FIXED_LIMIT = "This pool's limit is fixed: set LEASE_LIMIT=auto to learn it from the database";

/** A reading handed to `learnLimit`: the counts, or why the database could not be read. */
export type RoomReading = Result<{ readonly counts: RoomCounts }>;

/** A learning that failed: the last learned limit stays in force. */
export interface LearnFailure {
  /** When the coordinator was told, ms since the epoch. */
  readonly at: number;
  readonly code: string;
  readonly message: string;
}

/**
 * The learned limit as a pool has it now: what `learnLimit` answers and what the operator stats
 * carry (`LEASE_LIMIT=auto`).
 */
export interface LearnState {
  /** The limit in force. */
  readonly limit: number;
  /** Where it comes from: an operator's override wins over the learning. */
  readonly limitSource: LimitSource;
  /** The last learning with its terms, or null before the first one. */
  readonly learned: LearnedLimit | null;
  /** How old `learned` is, ms; null before the first learning. */
  readonly learnedAgeMs: number | null;
  /** The last learning that failed after the last one that worked (the limit stayed), or null. */
  readonly learnFailure: LearnFailure | null;
}

/** What `learnLimit` answers: the state after the reading, or the reading's failure (kept for operators). */
export type LearnResult = Result<LearnState>;

/**
 * The learned limit's state at `now`.
 *
 * @example
 * learnState({ limit: 17, limitOverride: null, learned, learnFailure: null }, now).learnedAgeMs
 */
export function learnState(
  pool: { readonly limit: number; readonly limitOverride: number | null },
  learned: LearnedLimit | null,
  learnFailure: LearnFailure | null,
  now: number,
): LearnState {
  return {
    limit: pool.limit,
    limitSource: limitSource(pool.limitOverride, learned),
    learned,
    learnedAgeMs: learned === null ? null : Math.max(0, now - learned.learnedAt),
    learnFailure,
  };
}

/**
 * Checks a reading handed in over RPC: the counts (`learnedLimit` checks each one), or a failure
 * whose code and message are cut to a sane length and stamped with `now`. Anything else fails
 * with `INVALID_ARGUMENT`.
 *
 * @example
 * const r = checkReading({ ok: false, code: "DATABASE_UNAVAILABLE", message: "refused" }, now);
 */
export function checkReading(
  reading: RoomReading,
  now: number,
): { ok: true; counts: RoomCounts } | { ok: false; failure: LearnFailure; answer: Failure } {
  if (typeof reading !== "object" || reading === null || typeof reading.ok !== "boolean")
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("reading", "{ ok: true, counts } or { ok: false, code, message }", reading),
    );
  if (reading.ok) {
    if (typeof reading.counts !== "object" || reading.counts === null)
      throw new LeaseError("INVALID_ARGUMENT", expected("reading.counts", "an object of room counts", reading.counts));
    return { ok: true, counts: reading.counts };
  }
  // A stable code (what a database error becomes): anything else is no failure this library names.
  if (!(ErrorCodes as readonly unknown[]).includes(reading.code) || typeof reading.message !== "string")
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected("reading", "a failure with one of leasegate's error codes and a string `message`", reading),
    );
  const failure = { at: now, code: reading.code, message: reading.message.slice(0, 500) };
  return { ok: false, failure, answer: { ok: false, code: reading.code, message: failure.message } };
}

/**
 * The terms of one learning: the counts read, with the pool's own caps.
 *
 * @example
 * learnedLimit(withCaps(counts, settings), now)
 */
export function withCaps(
  counts: RoomCounts,
  caps: { readonly headroom: number; readonly limitMax: number | null },
): RoomTerms {
  return { ...counts, headroom: caps.headroom, limitMax: caps.limitMax };
}

/** Which term decided the learned limit. */
export type RoomBound = "server" | "role" | "database" | "limitMax";

/** Where a pool's limit comes from now: `LEASE_LIMIT`, the last learning, or an operator. */
export type LimitSource = "configured" | "learned" | "operator";

/** One learning: the limit, the room each scope leaves, and the terms it came from. */
export interface LearnedLimit {
  /** The limit to apply: at least 1. */
  readonly limit: number;
  /** The least room of the three scopes, before the headroom: this pool's share of it. */
  readonly room: number;
  /**
   * This pool's share of the room on the server: max_connections − reserved slots − the client
   * connections of others that do not learn, split equally among the pools that learn (`pools`).
   */
  readonly server: number;
  /** Its share of the room under the role's limit, null when the role has none. */
  readonly role: number | null;
  /** Its share of the room under the database's limit, null when the database has none. */
  readonly database: number | null;
  /** The term that decided `limit`. */
  readonly bound: RoomBound;
  /**
   * The room minus the headroom is below 1: the limit is held at its floor of 1. The pool then
   * still grants one lease at a time (a pool of 0 would refuse every request, even when the others
   * leave); that one connection may meet `53300` and the database layer's retry takes it from there.
   */
  readonly starved: boolean;
  readonly terms: RoomTerms;
  /** When the terms were read, ms since the epoch. */
  readonly learnedAt: number;
}

/** Upper bound of any count here: far above any real server's max_connections. */
const MAX_COUNT = 1_000_000;

function count(name: string, value: unknown, min = 0): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > MAX_COUNT) {
    throw new LeaseError(
      "INVALID_ARGUMENT",
      expected(`terms.${name}`, `an integer from ${min} to ${MAX_COUNT}`, value),
    );
  }
  return value;
}

/** A part of `whole` (absent: 0): a count no larger than the whole it is part of. */
function part(name: string, value: unknown, whole: unknown): number {
  if (value === undefined) return 0;
  const n = count(name, value);
  if (typeof whole === "number" && n > whole)
    throw new LeaseError("INVALID_ARGUMENT", expected(`terms.${name}`, `at most ${whole} (a part of the others)`, n));
  return n;
}

/** A `CONNECTION LIMIT`: null, or any negative value (Postgres writes -1), means none. */
function optionalLimit(name: string, value: unknown): number | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "number" && Number.isInteger(value) && value < 0) return null;
  return count(name, value);
}

/**
 * The learned limit: the least of the server's, the role's and the database's room, minus the
 * headroom, capped by `limitMax`, never below 1. Bad terms throw `INVALID_ARGUMENT`.
 *
 * @example
 * learnedLimit({ maxConnections: 100, superuserReserved: 3, reserved: null, roleLimit: 20,
 *   databaseLimit: null, othersOnServer: 10, othersOfRole: 1, othersInDatabase: 6,
 *   headroom: 2, limitMax: null }, now)
 * // → { limit: 17, room: 19, server: 87, role: 19, database: null, bound: "role", … }
 */
export function learnedLimit(terms: RoomTerms, now: number): LearnedLimit {
  if (typeof terms !== "object" || terms === null)
    throw new LeaseError("INVALID_ARGUMENT", expected("terms", "an object of room terms", terms));
  const t: RoomTerms = {
    maxConnections: count("maxConnections", terms.maxConnections, 1),
    superuserReserved: count("superuserReserved", terms.superuserReserved),
    reserved: terms.reserved === null || terms.reserved === undefined ? null : count("reserved", terms.reserved),
    roleLimit: optionalLimit("roleLimit", terms.roleLimit),
    databaseLimit: optionalLimit("databaseLimit", terms.databaseLimit),
    othersOnServer: count("othersOnServer", terms.othersOnServer),
    othersOfRole: count("othersOfRole", terms.othersOfRole),
    othersInDatabase: count("othersInDatabase", terms.othersInDatabase),
    pools: terms.pools === undefined ? 1 : count("pools", terms.pools, 1),
    poolsOfRole: terms.poolsOfRole === undefined ? 1 : count("poolsOfRole", terms.poolsOfRole, 1),
    learningOnServer: part("learningOnServer", terms.learningOnServer, terms.othersOnServer),
    learningOfRole: part("learningOfRole", terms.learningOfRole, terms.othersOfRole),
    learningInDatabase: part("learningInDatabase", terms.learningInDatabase, terms.othersInDatabase),
    headroom: count("headroom", terms.headroom),
    limitMax: terms.limitMax === null || terms.limitMax === undefined ? null : count("limitMax", terms.limitMax, 1),
  };
  if (typeof now !== "number" || !Number.isFinite(now))
    throw new LeaseError("INVALID_ARGUMENT", expected("now", "a finite number of ms", now));
  // The connections of the other pools that learn are their share, not room taken: the room left
  // by everyone else is split equally among the pools that learn, so their limits sum to it.
  // The role's room is split among the pools of the role only.
  const share = (room: number, pools = t.pools ?? 1) => Math.floor(room / pools);
  const server = share(
    t.maxConnections - t.superuserReserved - (t.reserved ?? 0) - (t.othersOnServer - (t.learningOnServer ?? 0)),
  );
  const role =
    t.roleLimit === null ? null : share(t.roleLimit - (t.othersOfRole - (t.learningOfRole ?? 0)), t.poolsOfRole ?? 1);
  const database =
    t.databaseLimit === null ? null : share(t.databaseLimit - (t.othersInDatabase - (t.learningInDatabase ?? 0)));
  // Ties go to the widest scope: the server's room is named only when nothing narrower is as tight.
  let room = server;
  let bound: RoomBound = "server";
  if (database !== null && database <= room) [room, bound] = [database, "database"];
  if (role !== null && role <= room) [room, bound] = [role, "role"];
  let limit = room - t.headroom;
  if (t.limitMax !== null && t.limitMax < limit) [limit, bound] = [t.limitMax, "limitMax"];
  const starved = limit < 1;
  return { limit: Math.max(1, limit), room, server, role, database, bound, starved, terms: t, learnedAt: now };
}

/**
 * Where the limit in force comes from: an operator's override wins, then the last learning (when
 * a pool that learns has learned once), else the configured `LEASE_LIMIT` (with `auto`, before the
 * first learning: the start limit).
 *
 * @example
 * limitSource(null, learned) // "learned"
 */
export function limitSource(limitOverride: number | null, learned: LearnedLimit | null): LimitSource {
  if (limitOverride !== null) return "operator";
  return learned ? "learned" : "configured";
}
