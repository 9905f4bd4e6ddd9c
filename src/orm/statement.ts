import { LeaseError } from "../core/index.ts";
import type { Row } from "../db/driver.ts";

/** One statement's answer as a query builder needs it: rows, the command tag, the rows it touched. */
export interface StatementResult {
  readonly rows: Row[];
  /** The command tag's verb (`SELECT`, `INSERT`, `COMMIT`, and `ROLLBACK` for a failed transaction's COMMIT). */
  readonly command: string | undefined;
  readonly rowCount: number | undefined;
}

/** Runs one statement with Postgres placeholders (`$1`, `$2`) on one client. */
export type RunStatement = (text: string, parameters: readonly unknown[]) => Promise<StatementResult>;

interface PostgresJsClient {
  unsafe(text: string, parameters: unknown[]): Promise<Row[] & { count?: number | null; command?: string }>;
}

interface PgClient {
  query(text: string, parameters: unknown[]): Promise<{ rows: Row[]; command?: string; rowCount?: number | null }>;
}

/**
 * How to run a statement on a driver's own client, by the one query API each speaks: postgres.js's
 * `unsafe(text, parameters)` (a `Sql`), or node-postgres's `query(text, parameters)`, which the
 * Neon serverless driver's clients speak too. Anything else is refused with `INVALID_CONFIG`.
 *
 * @example
 * const { rows, rowCount } = await statementsOn(client)("UPDATE notes SET body = $1", ["x"]);
 */
export function statementsOn(client: unknown): RunStatement {
  const c = client as Partial<PostgresJsClient & PgClient> | null;
  if (typeof client === "function" && typeof c?.unsafe === "function") {
    const sql = client as unknown as PostgresJsClient;
    return async (text, parameters) => {
      const result = await sql.unsafe(text, [...parameters]);
      return { rows: result, command: result.command, rowCount: result.count ?? undefined };
    };
  }
  if (typeof c === "object" && c !== null && typeof c.query === "function") {
    const pg = client as PgClient;
    return async (text, parameters) => {
      const result = await pg.query(text, [...parameters]);
      return { rows: result.rows ?? [], command: result.command, rowCount: result.rowCount ?? undefined };
    };
  }
  throw new LeaseError(
    "INVALID_CONFIG",
    "The pool's driver client speaks neither postgres.js's `unsafe` nor node-postgres's `query`: use the driver of `leasegate/postgres`, `leasegate/pg` or `leasegate/neon`",
  );
}
