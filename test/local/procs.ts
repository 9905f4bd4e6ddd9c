/** Real OS processes for the local adapter's tests: each runs `worker.ts`, driven over IPC. */
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Command, Event } from "./worker.ts";

const WORKER = fileURLToPath(new URL("./worker.ts", import.meta.url));

export interface Proc {
  child: ChildProcess;
  events: Array<Event & { at: number }>;
  send(cmd: Command): void;
  next(match: (e: Event) => boolean, timeoutMs?: number): Promise<Event & { at: number }>;
}

/**
 * Forks one worker process with `env` on top of this one's, and resolves once it is ready.
 *
 * @example
 * const p = await startWorker({ DATABASE_URL: url, LEASE_POOL: "p", LEASE_LIMIT: "5" });
 */
export function startWorker(env: Record<string, string>): Promise<Proc> {
  const child = fork(WORKER, [], { env: { ...process.env, ...env }, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const events: Proc["events"] = [];
  const watchers: Array<(e: Event & { at: number }) => void> = [];
  child.on("message", (e: Event) => {
    const stamped = { ...e, at: Date.now() };
    events.push(stamped);
    for (const w of [...watchers]) w(stamped);
  });
  const proc: Proc = {
    child,
    events,
    send: (cmd) => child.send(cmd),
    next: (match, timeoutMs = 10_000) =>
      new Promise((resolve, reject) => {
        const seen = events.find(match);
        if (seen) return resolve(seen);
        const timer = setTimeout(
          () => reject(new Error(`no matching event from pid ${child.pid} in ${timeoutMs} ms`)),
          timeoutMs,
        );
        watchers.push(function w(e) {
          if (!match(e)) return;
          clearTimeout(timer);
          watchers.splice(watchers.indexOf(w), 1);
          resolve(e);
        });
      }),
  };
  return proc.next((e) => e.event === "ready").then(() => proc);
}

/** Matches the first answer (granted or failed) to the request tagged `tag`. */
export const answered = (tag: string) => (e: Event) => (e.event === "granted" || e.event === "failed") && e.tag === tag;
