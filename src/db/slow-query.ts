import { redact, withoutValues } from "./safe-error.ts";
import { writeLogLine } from "./log.ts";

/** One line of the slow-query log: JSON, one object per line. */
export interface SlowQueryEntry {
  readonly event: "slow_query";
  readonly database: string;
  /** The statement, shortened to 200 characters, redacted and (unless `DB_LOG_DETAIL=on`) without its literal values; never its parameters. */
  readonly query: string;
  readonly durationMs: number;
  readonly thresholdMs: number;
  readonly ok: boolean;
  readonly holder?: string;
}

/**
 * A slow-query log: `record` writes a JSON line through `write` when a statement took at least
 * `thresholdMs`. `thresholdMs` 0 logs everything; `Infinity` nothing.
 *
 * @example
 * const slow = slowQueryLog({ thresholdMs: 200, database: "main" });
 * slow.record("SELECT …", 350, true); // {"event":"slow_query",…,"durationMs":350}
 */
export function slowQueryLog(options: {
  thresholdMs: number;
  database: string;
  write?: (line: string) => void;
  detail?: boolean;
}): {
  readonly thresholdMs: number;
  record(query: string, durationMs: number, ok: boolean, holder?: string): void;
} {
  const write = options.write ?? writeLogLine;
  return {
    thresholdMs: options.thresholdMs,
    record(query, durationMs, ok, holder) {
      if (!(durationMs >= options.thresholdMs)) return;
      const entry: SlowQueryEntry = {
        event: "slow_query",
        database: options.database,
        query: redact((options.detail ? query : withoutValues(query)).replace(/\s+/g, " ").trim().slice(0, 200)),
        durationMs: Math.round(durationMs),
        thresholdMs: options.thresholdMs,
        ok,
        ...(holder ? { holder: holder.slice(0, 100) } : {}),
      };
      write(JSON.stringify(entry));
    },
  };
}
