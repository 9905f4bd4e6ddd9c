/**
 * The fields of a lease and of a waiter as the local adapter stores them, declared once: the
 * property, its column, its Postgres type and whether it may be absent. The tables, the upgrade
 * of older tables, the rows read back, the rows written and the notices are all built from these
 * lists, so a new field of `Lease` or `Waiter` is one entry here (the compiler asks for it) plus a
 * migration test — never a position to keep in step in several places.
 */
import type { Lease, Waiter } from "../src/core/index.ts";

/** How values of one Postgres type cross JSON: out through `json_build_array`, in from `e->>i`. */
const TYPES = {
  text: { cast: (e: string) => e },
  bigint: { cast: (e: string) => `(${e})::bigint` },
  integer: { cast: (e: string) => `(${e})::integer` },
  boolean: { cast: (e: string) => `(${e})::boolean` },
} as const;

export type ColumnType = keyof typeof TYPES;

/** One stored field of a `T`. */
export interface Field<T> {
  /** The property of the core's object. */
  readonly key: keyof T & string;
  /** Its column (snake_case). */
  readonly column: string;
  readonly type: ColumnType;
  /**
   * May be absent: stored as NULL, left out when read back. A field added after the first release
   * must be optional (or have a default): older tables gain it by `ADD COLUMN`, with no value.
   */
  readonly optional?: true;
  /** Changes after the row is written (a renewal moves `expiresAt`): written back when it differs. */
  readonly mutable?: true;
  /** The stored form of a value that is not plain JSON (default: as is; `undefined` is NULL). */
  readonly encode?: (value: unknown) => string | number | boolean | null;
  /** The value back from its stored form (default: as is). */
  readonly decode?: (stored: unknown) => unknown;
}

/** A lease row (`leasegate_leases`, keyed by pool and id). */
export const LEASE_FIELDS = [
  { key: "id", column: "id", type: "text" },
  { key: "fence", column: "fence", type: "bigint" },
  { key: "holder", column: "holder", type: "text" },
  { key: "grantedAt", column: "granted_at", type: "bigint" },
  { key: "expiresAt", column: "expires_at", type: "bigint", mutable: true },
  { key: "priority", column: "priority", type: "text", optional: true },
  // Re-registered after a restart (the Durable Object's recovery window); kept like any field.
  // (Tables of earlier versions also have a `relearned` column of the same meaning: unused, null.)
  { key: "recovered", column: "recovered", type: "boolean", optional: true },
  // Revoked by an operator: still held (until released or expired), never renewed.
  { key: "revoked", column: "revoked", type: "boolean", optional: true, mutable: true },
] as const satisfies readonly Field<Lease>[];

/** A waiter row (`leasegate_waiters`, keyed by pool and id, in queue order by `seq`). */
export const WAITER_FIELDS = [
  { key: "leaseId", column: "id", type: "text" },
  { key: "holder", column: "holder", type: "text" },
  { key: "enqueuedAt", column: "enqueued_at", type: "bigint" },
  { key: "deadline", column: "deadline", type: "bigint" },
  { key: "ttlMs", column: "ttl_ms", type: "bigint" },
  // A grant from the queue lives this long until claimed (null: ttl_ms).
  { key: "claimMs", column: "claim_ms", type: "bigint", optional: true },
  { key: "priority", column: "priority", type: "text", optional: true },
  { key: "tenant", column: "tenant", type: "text", optional: true },
  // The wait predicted at enqueue, ms: its error is measured at the grant.
  { key: "predictedMs", column: "predicted_ms", type: "bigint", optional: true },
] as const satisfies readonly Field<Waiter>[];

/**
 * Compiles only while every property of `T` has its field: a property added to the core's
 * `Lease` or `Waiter` without an entry above stops the build here, naming the property.
 */
type Unstored<T, F extends readonly Field<T>[]> = Exclude<keyof T, F[number]["key"]>;
const everyLeaseField: [Unstored<Lease, typeof LEASE_FIELDS>] extends [never]
  ? true
  : Unstored<Lease, typeof LEASE_FIELDS> = true;
const everyWaiterField: [Unstored<Waiter, typeof WAITER_FIELDS>] extends [never]
  ? true
  : Unstored<Waiter, typeof WAITER_FIELDS> = true;
void everyLeaseField;
void everyWaiterField;

/**
 * A stored format built from one field list: the column list, a row's columns as one JSON array
 * (for `json_agg`), the casts that read such an array back in SQL, and the encoding both ways.
 *
 * @example
 * const leases = codec(LEASE_FIELDS);
 * leases.decode(leases.encode(lease)) // an equal lease
 */
export interface Codec<T> {
  readonly fields: readonly Field<T>[];
  /** `id, fence, holder, …` */
  readonly columns: string;
  /** `json_build_array(id, fence, …)`: one row as one JSON array, in field order. */
  readonly jsonArray: string;
  /** `[e->>0, (e->>1)::bigint, …]`: each column of the JSON array `e`, typed, in field order. */
  readonly fromJson: (e: string) => string[];
  /** The JSON array of one object, in field order. */
  encode(value: T): unknown[];
  /** The object of one JSON array, optional fields left out when NULL. */
  decode(row: readonly unknown[]): T;
}

/**
 * The stored format of `fields`.
 *
 * @example
 * const waiters = codec(WAITER_FIELDS);
 * const sql = `INSERT INTO leasegate_waiters (${waiters.columns}) SELECT ${waiters.fromJson("e").join(", ")} FROM …`;
 */
export function codec<T>(fields: readonly Field<T>[]): Codec<T> {
  const columns = fields.map((f) => f.column).join(", ");
  return {
    fields,
    columns,
    jsonArray: `json_build_array(${columns})`,
    fromJson: (e) => fields.map((f, i) => TYPES[f.type].cast(`${e}->>${i}`)),
    encode: (value) =>
      fields.map((f) => {
        const v = (value as Record<string, unknown>)[f.key];
        return f.encode ? f.encode(v) : (v ?? null);
      }),
    decode: (row) => {
      const out: Record<string, unknown> = {};
      for (let i = 0; i < fields.length; i++) {
        const f = fields[i]!;
        const stored = row[i] ?? null;
        if (stored === null && f.optional) continue;
        out[f.key] = f.decode ? f.decode(stored) : stored;
      }
      return out as T;
    },
  };
}

/**
 * The column definitions of `fields` for `CREATE TABLE` (`fence bigint NOT NULL, …`).
 *
 * @example
 * `CREATE TABLE t (pool text NOT NULL, ${columnDefinitions(LEASE_FIELDS)}, PRIMARY KEY (pool, id))`
 */
export function columnDefinitions<T>(fields: readonly Field<T>[]): string {
  return fields.map((f) => `${f.column} ${f.type}${f.optional ? "" : " NOT NULL"}`).join(",\n  ");
}
