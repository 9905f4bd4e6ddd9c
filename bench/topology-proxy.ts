/**
 * A delaying TCP proxy (a child process of `npm run bench:topology`): every chunk is passed on
 * `oneWayMs` after it arrived, in each direction, in order. It sits between the Worker processes
 * and the coordinator's process, on the connection workerd opens for calls to an object of
 * another process (the dev registry's debug port), so only coordinator calls cross it.
 *
 * Control (IPC from the parent): `{ target: "host:port" }` starts it and answers `{ port }`;
 * `{ oneWayMs }` changes the delay for chunks that arrive from then on (answers `{ ok: true }`).
 */
import { type Socket, connect, createServer } from "node:net";

let oneWayMs = 0;

function pipe(from: Socket, to: Socket): void {
  from.on("data", (chunk) => {
    // Same delay for every chunk of a direction: timers of equal duration fire in order.
    if (oneWayMs === 0) to.write(chunk);
    else setTimeout(() => to.write(chunk), oneWayMs);
  });
  from.on("end", () => setTimeout(() => to.end(), oneWayMs));
  from.on("error", () => to.destroy());
  from.on("close", () => setTimeout(() => to.destroy(), oneWayMs + 1));
}

process.on("message", (message: { target?: string; oneWayMs?: number; port?: number }) => {
  if (message.oneWayMs !== undefined) {
    oneWayMs = message.oneWayMs;
    process.send!({ ok: true });
    return;
  }
  const [host, port] = message.target!.split(":") as [string, string];
  const server = createServer((client) => {
    client.setNoDelay(true);
    const upstream = connect({ host, port: Number(port) });
    upstream.setNoDelay(true);
    pipe(client, upstream);
    pipe(upstream, client);
  });
  server.listen(message.port ?? 0, "127.0.0.1", () =>
    process.send!({ port: (server.address() as { port: number }).port }),
  );
});
process.on("disconnect", () => process.exit(0));
