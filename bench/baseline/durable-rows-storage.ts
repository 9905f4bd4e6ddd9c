/**
 * The Durable Object's storage: lease rows and a `meta` table (the pool's snapshot, the shard it
 * is, the last reconciliation) in the object's SQLite. Writes of one batch go in one transaction.
 */
import type { Lease, PoolSnapshot, Priority } from "../../src/core/index.ts";

/** Rows per statement in a flush. Durable Object SQLite binds at most 100 values per statement. */
const DELETE_CHUNK = 100;
const INSERT_CHUNK = 16;
/** One statement text each, so the object prepares it once; a short chunk repeats its last item. */
const DELETE_LEASES = `DELETE FROM leases WHERE id IN (${Array(DELETE_CHUNK).fill("?").join(", ")})`;
const INSERT_LEASES = `INSERT OR REPLACE INTO leases (id, fence, holder, granted_at, expires_at, priority) VALUES ${Array(INSERT_CHUNK).fill("(?, ?, ?, ?, ?, ?)").join(", ")}`;

/** `items` in chunks of exactly `size`, the last one padded with its own last item (for fixed statements). */
function* paddedChunks<T>(items: T[], size: number): Generator<T[]> {
  for (let i = 0; i < items.length; i += size) {
    const chunk = items.slice(i, i + size);
    while (chunk.length < size) chunk.push(chunk[chunk.length - 1]!);
    yield chunk;
  }
}

interface LeaseRow extends Record<string, SqlStorageValue> {
  id: string;
  fence: number;
  holder: string;
  granted_at: number;
  expires_at: number;
  priority: string | null;
}

/**
 * The object's tables, read once at start and written in batches.
 *
 * @example
 * const store = new CoordinatorStore(ctx.storage);
 * const { leases, snapshot } = store.load();
 */
export class CoordinatorStore {
  readonly #storage: DurableObjectStorage;

  constructor(storage: DurableObjectStorage) {
    this.#storage = storage;
  }

  /** Creates the tables when missing and reads the lease rows and the snapshot. */
  load(): { leases: Lease[]; snapshot: PoolSnapshot | null } {
    const sql = this.#storage.sql;
    this.#storage.transactionSync(() => {
      sql.exec(`CREATE TABLE IF NOT EXISTS leases (
        id TEXT PRIMARY KEY,
        fence INTEGER NOT NULL,
        holder TEXT NOT NULL,
        granted_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        priority TEXT
      )`);
      sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
      // Objects created by leasegate 0.1 have no priority column (their leases keep `normal`).
      const columns = sql.exec<{ name: string }>("PRAGMA table_info(leases)").toArray();
      if (!columns.some((c) => c.name === "priority")) sql.exec("ALTER TABLE leases ADD COLUMN priority TEXT");
    });
    const leases = sql
      .exec<LeaseRow>("SELECT id, fence, holder, granted_at, expires_at, priority FROM leases")
      .toArray()
      .map((r): Lease => {
        const lease = { id: r.id, fence: r.fence, holder: r.holder, grantedAt: r.granted_at, expiresAt: r.expires_at };
        return r.priority === null ? lease : { ...lease, priority: r.priority as Priority };
      });
    const snapshot = this.readMeta("snapshot");
    return { leases, snapshot: snapshot === null ? null : (JSON.parse(snapshot) as PoolSnapshot) };
  }

  readMeta(key: string): string | null {
    const row = this.#storage.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray()[0];
    return row ? row.value : null;
  }

  writeMeta(key: string, value: string | null): void {
    if (value === null) this.#storage.sql.exec("DELETE FROM meta WHERE key = ?", key);
    else this.#storage.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
  }

  /**
   * One transaction: the staged lease rows (a lease to upsert, or null to delete) and the pool's
   * snapshot. A statement per chunk, not per row: in workerd each statement costs a good part of a
   * small commit. Repeating a row in a chunk deletes or writes the same row again: no effect.
   */
  write(staged: ReadonlyMap<string, Lease | null>, snapshot: PoolSnapshot): void {
    const sql = this.#storage.sql;
    const deleted: string[] = [];
    const written: Lease[] = [];
    for (const [id, lease] of staged) {
      if (lease === null) deleted.push(id);
      else written.push(lease);
    }
    this.#storage.transactionSync(() => {
      for (const ids of paddedChunks(deleted, DELETE_CHUNK)) sql.exec(DELETE_LEASES, ...ids);
      for (const rows of paddedChunks(written, INSERT_CHUNK)) {
        sql.exec(
          INSERT_LEASES,
          ...rows.flatMap((l) => [l.id, l.fence, l.holder, l.grantedAt, l.expiresAt, l.priority ?? null]),
        );
      }
      this.writeMeta("snapshot", JSON.stringify(snapshot));
    });
  }

  /** Resolves when everything written so far is durable. */
  sync(): Promise<void> {
    return this.#storage.sync();
  }
}
