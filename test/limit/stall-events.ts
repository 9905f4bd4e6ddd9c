/** What the stalled holder (`stall-holder.ts`) and its test (`stall.test.ts`) say to each other. */

/** Messages of the stalled holder to the test. */
export type StallEvent =
  | { event: "ready" }
  | { event: "stalling"; at: number }
  | { event: "woke"; at: number }
  | {
      event: "done";
      at: number;
      ok: boolean;
      code?: string | undefined;
      executed?: string | undefined;
      /** Whether the statement after the stall reached the database and answered. */
      ranAfterStall: boolean;
      opened: Array<[string, number]>;
      closed: Array<[string, number]>;
      refused: Array<{ at: number; code: string; app: string }>;
    };

/** The statement the holder tries after the stall: it must never reach the database. */
export const AFTER_STALL = "SELECT 'after the stall' AS marker /* after-stall */";
/** The statement running when the holder stalls. */
export const DURING_STALL = "SELECT pg_sleep(0.3) /* stalled */";
