/**
 * The one place leasegate writes log output: structured JSON lines (slow queries, final failures)
 * that callers have already bounded and redacted with `serializeError` / `redact`. Everything else
 * in the library logs nothing.
 *
 * @example
 * writeLogLine(JSON.stringify({ event: "slow_query", durationMs: 350 }));
 */
export function writeLogLine(line: string): void {
  console.log(line);
}
