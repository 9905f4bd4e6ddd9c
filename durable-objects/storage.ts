/**
 * The Durable Object's storage. No lease is stored: leases and waiters live in memory, and a
 * restarted object recovers them (`src/core/recovery.ts`). What is stored, in the object's SQLite:
 * - `bounds` (key-value): the fence ceiling and the expiry horizon, written ahead of need;
 * - `tokenKey` (key-value): the key of the lease tokens, written once when the object first starts;
 * - `snapshot` (key-value): counters, wait histogram, hold statistics, paused flag, limit override;
 * - the `meta` table: the shard this object is, the last reconciliation, the ids of revoked leases.
 * Objects stored by earlier versions kept lease rows and their snapshot in `meta`: `load` reads
 * them once as the leases granted before the restart and drops them.
 */
import type { Bounds, PoolSnapshot } from "../src/core/index.ts";
import { newTokenKey } from "./tokens.ts";

/** Writes that must not hold the object's answers: their confirmation is awaited with `sync()`. */
const BACKGROUND = { allowUnconfirmed: true } as const;

/** What an object stored by an earlier version held as leases: what a restart must wait out. */
export interface EarlierLeases {
  maxFence: number;
  maxExpiresAt: number;
}

/**
 * The object's stored state, read once at start and written off the request path.
 *
 * @example
 * const store = new CoordinatorStore(ctx.storage);
 * const { snapshot, bounds, earlier } = store.load();
 */
export class CoordinatorStore {
  readonly #storage: DurableObjectStorage;

  constructor(storage: DurableObjectStorage) {
    this.#storage = storage;
  }

  /**
   * Creates the meta table when missing and reads the snapshot and bounds. An earlier version's
   * lease rows come back as `earlier` (and its snapshot as the snapshot); call `dropEarlier` once
   * the bounds that cover them are written.
   */
  load(): { snapshot: PoolSnapshot | null; bounds: Bounds | null; earlier: EarlierLeases | null } {
    const sql = this.#storage.sql;
    sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
    let snapshot = this.#storage.kv.get<PoolSnapshot>("snapshot") ?? null;
    const bounds = this.#storage.kv.get<Bounds>("bounds") ?? null;
    let earlier: EarlierLeases | null = null;
    const hasRows =
      sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leases'").toArray().length > 0;
    if (hasRows) {
      const row = sql
        .exec<{ f: number | null; e: number | null }>("SELECT MAX(fence) AS f, MAX(expires_at) AS e FROM leases")
        .one();
      earlier = { maxFence: row.f ?? 0, maxExpiresAt: row.e ?? 0 };
    }
    const legacy = this.readMeta("snapshot");
    if (snapshot === null && legacy !== null) snapshot = JSON.parse(legacy) as PoolSnapshot;
    return { snapshot, bounds, earlier };
  }

  /** Forgets an earlier version's lease rows and snapshot row (their content now lives in `bounds` and `snapshot`). */
  dropEarlier(): void {
    this.#storage.transactionSync(() => {
      this.#storage.sql.exec("DROP TABLE IF EXISTS leases");
      this.writeMeta("snapshot", null);
    });
  }

  /**
   * The key of the object's lease tokens: generated and written once, on the object's first start
   * (held by the output gate like any write before the first answer), then read back forever.
   */
  tokenKey(): string {
    const stored = this.#storage.kv.get<string>("tokenKey");
    if (typeof stored === "string") return stored;
    const key = newTokenKey();
    this.#storage.kv.put("tokenKey", key);
    return key;
  }

  readMeta(key: string): string | null {
    const row = this.#storage.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray()[0];
    return row ? row.value : null;
  }

  /** An operator's change: held by the output gate until durable, so its answer means it is kept. */
  writeMeta(key: string, value: string | null): void {
    if (value === null) this.#storage.sql.exec("DELETE FROM meta WHERE key = ?", key);
    else this.#storage.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
  }

  /**
   * The snapshot. `background`: written without holding any answer (counters, histogram; a crash
   * may lose it); otherwise the output gate holds answers until it is durable (operator changes).
   */
  writeSnapshot(snapshot: PoolSnapshot, background: boolean): Promise<void> {
    return this.#storage.put("snapshot", snapshot, background ? BACKGROUND : {});
  }

  /** The next bounds, written without holding any answer; `sync()` tells when they are durable. */
  writeBounds(bounds: Bounds): Promise<void> {
    return this.#storage.put("bounds", bounds, BACKGROUND);
  }

  /** Resolves when everything written so far is durable. */
  sync(): Promise<void> {
    return this.#storage.sync();
  }
}
