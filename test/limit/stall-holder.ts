/**
 * A holder whose event loop stalls mid-statement, as its own OS process (for `stall.test.ts`): a
 * `localPool` of the scenario's pool whose leased connections log in as the limited role
 * (`ROLE_URL`). On `run` it takes a lease through `pool.db.transaction`, sends a statement, then
 * blocks its thread for `STALL_MS` (`Atomics.wait`: no timer, no I/O callback runs), and when it
 * wakes tries one more statement. It reports over IPC when it stalled and woke, how
 * the call ended, and what its leased connections did.
 */
import { isLeaseError } from "../../src/core/index.ts";
import { connectionLog, leasedDriver, poolEnv, sleep } from "./harness.ts";
import { localPool } from "../../local/pool.ts";
import { AFTER_STALL, DURING_STALL, type StallEvent } from "./stall-events.ts";

const send = (e: StallEvent) => process.send!(e);
const stallMs = Number(process.env.STALL_MS);
const log = connectionLog();
const pool = await localPool(
  poolEnv(process.env.POOL!, {
    LEASE_TTL_MS: process.env.LEASE_TTL_MS,
    LEASE_ENFORCE: process.env.LEASE_ENFORCE,
    APPLICATION_NAME: process.env.APP!,
  }),
  { driver: leasedDriver(process.env.ROLE_URL!, log) },
);

async function run(): Promise<void> {
  let ranAfterStall = false;
  const outcome: Partial<StallEvent & { event: "done" }> = {};
  try {
    // A transaction: the library sends each statement, so it can check its own clock first (on
    // `pool.sql`'s raw client it cannot come between the user's code and the socket).
    await pool.db.transaction(
      async (tx) => {
        await tx.query("SELECT 1 AS opened");
        const during = tx.query(DURING_STALL);
        during.catch(() => {});
        // Let the IPC message and the statement leave before the thread blocks.
        send({ event: "stalling", at: Date.now() });
        await sleep(20);
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, stallMs);
        send({ event: "woke", at: Date.now() });
        await during;
        await tx.query(AFTER_STALL);
        ranAfterStall = true;
      },
      { holder: "stalled" },
    );
    outcome.ok = true;
  } catch (error) {
    outcome.ok = false;
    outcome.code = isLeaseError(error) ? error.code : String((error as { code?: unknown })?.code ?? error);
    outcome.executed = isLeaseError(error) ? error.executed : undefined;
  }
  send({
    event: "done",
    at: Date.now(),
    ok: outcome.ok,
    code: outcome.code,
    executed: outcome.executed,
    ranAfterStall,
    opened: [...log.opened].map(([app, o]) => [app, o.at]),
    closed: [...log.closed],
    refused: log.refused,
  });
}

process.on("message", (msg: { cmd: "run" | "exit" }) => {
  if (msg.cmd === "run") void run();
  else
    void pool
      .close()
      .catch(() => {})
      .then(() => process.exit(0));
});
send({ event: "ready" });
