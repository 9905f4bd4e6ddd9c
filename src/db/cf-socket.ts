import { connect } from "cloudflare:sockets";
import { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";

/**
 * A `cloudflare:sockets` TCP socket in the shape postgres.js expects (its `socket` option).
 *
 * postgres.js's own workerd polyfill closes the socket right after writing Terminate; the read it
 * still has pending then rejects with nobody listening, which surfaces as an unhandled rejection
 * on every `sql.end()`. This adapter reports errors only while the driver listens, emits `close`
 * exactly once, and swallows errors from closing an already-closed socket.
 *
 * @example
 * const sql = postgres(env.HYPERDRIVE.connectionString, { max: 1, socket: cloudflareSocket } as never);
 */
export async function cloudflareSocket(options: { host: string[]; port: number[] }) {
  const raw = connect({ hostname: options.host[0]!, port: options.port[0]! });
  const writer = raw.writable.getWriter();
  const reader = raw.readable.getReader();
  let closed = false;

  const socket = Object.assign(new EventEmitter(), {
    readyState: "open" as "open" | "closing" | "closed",
    write(data: Uint8Array, callback?: () => void): boolean {
      writer.write(data).then(callback, fail);
      return true;
    },
    end(data?: Uint8Array): void {
      if (socket.readyState === "closed") return;
      socket.readyState = "closing";
      const written = data ? writer.write(data) : Promise.resolve();
      // The server closes after Terminate; then close our side too, whatever state it is in.
      written
        .then(() => writer.close())
        .catch(() => {})
        .finally(() => raw.close().catch(() => {}));
    },
    destroy(): void {
      socket.readyState = "closing";
      raw.close().catch(() => {});
    },
    setKeepAlive(): void {},
  });

  function emitClose(): void {
    if (closed) return;
    closed = true;
    socket.readyState = "closed";
    socket.emit("close");
  }

  function fail(error: unknown): void {
    if (socket.readyState === "open" && socket.listenerCount("error") > 0) socket.emit("error", error);
    emitClose();
  }

  raw.closed.then(emitClose, fail);
  void pump(reader, (data) => socket.emit("data", data)).then(emitClose, fail);

  // postgres.js treats a socket handed to it as connected.
  await raw.opened;
  return socket;
}

/** Hands every chunk the socket reads to `onData` until the stream ends. */
async function pump(reader: ReadableStreamDefaultReader<Uint8Array>, onData: (data: Buffer) => void): Promise<void> {
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    onData(Buffer.from(value));
  }
}

/**
 * Sends `packet` on a new `cloudflare:sockets` connection to `target` and resolves when the server
 * has closed it: how a Worker sends a Postgres cancel request (see `sendCancelRequest`).
 *
 * @example
 * await sendPacket({ host: "127.0.0.1", port: 5432 }, packet);
 */
export async function sendPacket(target: { host: string; port: number }, packet: Uint8Array): Promise<void> {
  const socket = connect({ hostname: target.host, port: target.port });
  try {
    const writer = socket.writable.getWriter();
    await writer.write(packet);
    // The server answers a cancel request by closing: reading to the end waits for that.
    const reader = socket.readable.getReader();
    for (;;) if ((await reader.read()).done) break;
  } finally {
    await socket.close().catch(() => {});
  }
}
