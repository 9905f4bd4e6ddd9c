/**
 * leasegate for Kysely (`npm install kysely`, 0.29): a dialect whose every connection is
 * paid for by one lease of a leased pool (`workerPool`, `localPool`), on whichever driver the pool
 * was given (postgres.js, node-postgres, Neon). This entry imports `kysely` and no driver.
 *
 * @example
 * import { Kysely } from "kysely";
 * import { LeasedDialect } from "leasegate/kysely";
 */
import {
  AbortedTransactionError,
  type CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  IdentifierNode,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryCompiler,
  type QueryResult,
  RawNode,
  type TransactionSettings,
  createQueryId,
} from "kysely";
import { LeaseError } from "./core/index.ts";
import type { CallOptions } from "./db/database.ts";
import { type HeldConnection, type LeaseOptions, type SqlPool, callOptionsOf, holdConnection } from "./orm/held.ts";
import { type RunStatement, type StatementResult, statementsOn } from "./orm/statement.ts";

/** What {@link LeasedDialect} is given: the pool, and how each connection's lease is asked for. */
export interface LeasedDialectConfig<Client = unknown> extends LeaseOptions {
  /** The pool whose leases pay for the connections: `workerPool(env, ctx, { driver })` or `localPool(env)`. */
  pool: SqlPool<Client>;
}

/**
 * Kysely's Postgres dialect over a leased pool: every connection Kysely acquires is one lease and
 * one fresh connection (a single query acquires and releases one; a transaction holds one from
 * BEGIN to COMMIT or ROLLBACK), closed before the slot is given back. A full queue or a wait past
 * `waitMs` makes the query reject with `QUEUE_FULL` / `ACQUIRE_TIMEOUT` (503 with `Retry-After`
 * through `errorResponse`); a connection whose deadline passed or whose lease was lost answers
 * `DEADLINE_EXCEEDED` / `LEASE_LOST` to what is asked of it after. Statement errors are the
 * driver's own. Build a `Kysely` per request on Workers (the pool is per request), one per process
 * on Node.
 *
 * @example
 * const db = new Kysely<Database>({ dialect: new LeasedDialect({ pool: workerPool(env, ctx, { driver }) }) });
 * const notes = await db.selectFrom("notes").selectAll().execute();
 */
export class LeasedDialect implements Dialect {
  readonly #pool: SqlPool<unknown>;
  readonly #calls: CallOptions;

  constructor(config: LeasedDialectConfig) {
    if (typeof config?.pool?.sql !== "function")
      throw new LeaseError(
        "INVALID_ARGUMENT",
        "LeasedDialect needs `{ pool }`: a leased pool from `workerPool(env, ctx, { driver })` or `localPool(env)`",
      );
    this.#pool = config.pool;
    this.#calls = callOptionsOf(config);
  }

  createDriver(): Driver {
    return new LeasedDriver(this.#pool, this.#calls);
  }

  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new PostgresAdapter();
  }

  // biome-ignore lint/suspicious/noExplicitAny: Kysely's own signature (`Dialect.createIntrospector`).
  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return new PostgresIntrospector(db);
  }
}

const AFFECTING = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);

/** One Kysely connection: a connection held under one lease until Kysely releases it. */
class LeasedConnection implements DatabaseConnection {
  readonly #held: HeldConnection<unknown>;
  readonly #run: RunStatement;

  constructor(held: HeldConnection<unknown>) {
    this.#held = held;
    this.#run = statementsOn(held.client);
  }

  /** Gives the connection back: closed, then its slot released. */
  release(): Promise<void> {
    return this.#held.release();
  }

  /** One statement; once the hold was stopped (deadline, lost lease), its error instead. */
  async statement(text: string, parameters: readonly unknown[]): Promise<StatementResult> {
    const stopped = this.#held.stopped();
    if (stopped) throw stopped;
    try {
      return await this.#run(text, parameters);
    } catch (error) {
      // A statement cut off by the deadline or the lease's end says so, not "connection closed".
      throw await this.#held.failure(error);
    }
  }

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    const { rows, command, rowCount } = await this.statement(compiled.sql, compiled.parameters);
    return {
      rows: rows as R[],
      numAffectedRows: command && AFFECTING.has(command) ? BigInt(rowCount ?? 0) : undefined,
    };
  }

  // The rows come at once (no server-side cursor), then in chunks of `chunkSize`.
  async *streamQuery<R>(compiled: CompiledQuery, chunkSize = 100): AsyncIterableIterator<QueryResult<R>> {
    const { rows } = await this.executeQuery<R>(compiled);
    for (let i = 0; i < rows.length; i += Math.max(1, chunkSize)) yield { rows: rows.slice(i, i + chunkSize) };
  }
}

/** Kysely's driver over a leased pool: acquire = a lease and a fresh connection, release = close then give back. */
class LeasedDriver implements Driver {
  readonly #pool: SqlPool<unknown>;
  readonly #calls: CallOptions;

  constructor(pool: SqlPool<unknown>, calls: CallOptions) {
    this.#pool = pool;
    this.#calls = calls;
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    const held = await holdConnection(this.#pool, this.#calls);
    try {
      return new LeasedConnection(held);
    } catch (error) {
      await held.release();
      throw error;
    }
  }

  async beginTransaction(connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    let text = "begin";
    if (settings.isolationLevel || settings.accessMode) {
      text = "start transaction";
      if (settings.isolationLevel) text += ` isolation level ${settings.isolationLevel}`;
      if (settings.accessMode) text += ` ${settings.accessMode}`;
    }
    await leased(connection).statement(text, []);
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    // Postgres completes the COMMIT of a transaction an earlier error aborted with ROLLBACK.
    const { command } = await leased(connection).statement("commit", []);
    if (command === "ROLLBACK") throw new AbortedTransactionError();
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await leased(connection).statement("rollback", []);
  }

  async savepoint(connection: DatabaseConnection, name: string, compile: QueryCompiler["compileQuery"]): Promise<void> {
    await savepointCommand(connection, "savepoint", name, compile);
  }

  async rollbackToSavepoint(
    connection: DatabaseConnection,
    name: string,
    compile: QueryCompiler["compileQuery"],
  ): Promise<void> {
    await savepointCommand(connection, "rollback to", name, compile);
  }

  async releaseSavepoint(
    connection: DatabaseConnection,
    name: string,
    compile: QueryCompiler["compileQuery"],
  ): Promise<void> {
    await savepointCommand(connection, "release", name, compile);
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    await leased(connection).release();
  }

  // The pool is the app's (per request on Workers, `close()`d by the app on Node): nothing of it is ours to end.
  async destroy(): Promise<void> {}
}

function leased(connection: DatabaseConnection): LeasedConnection {
  if (connection instanceof LeasedConnection) return connection;
  throw new LeaseError("INVALID_ARGUMENT", "A connection of another driver was given to leasegate's Kysely driver");
}

// The savepoint's name goes through the compiler as an identifier, so it is quoted and escaped.
async function savepointCommand(
  connection: DatabaseConnection,
  command: string,
  name: string,
  compile: QueryCompiler["compileQuery"],
): Promise<void> {
  const node = RawNode.createWithChildren([RawNode.createWithSql(`${command} `), IdentifierNode.create(name)]);
  const compiled = compile(node, createQueryId());
  await leased(connection).statement(compiled.sql, compiled.parameters);
}
