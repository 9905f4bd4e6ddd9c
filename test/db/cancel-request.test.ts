import { type Socket, createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { keyOf, sendCancelRequest } from "../../src/db/cancel-request.ts";

// A real TCP server in the place of the database (or of a pooler in front of it): what arrives,
// and in what shape. PgBouncer drops a cancel request whose connection is half-closed right behind
// the packet ("client unexpected eof"), so the request must be written, not ended, and the
// connection left for the server to close — as Postgres and PgBouncer both do once they have it.
async function listener(onSocket: (socket: Socket, received: Buffer[]) => void) {
  const server = createServer((socket) => {
    const received: Buffer[] = [];
    socket.on("data", (d) => received.push(d));
    socket.on("error", () => {});
    onSocket(socket, received);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return { port, close: () => new Promise((resolve) => server.close(resolve)) };
}

describe("sendCancelRequest", () => {
  it("sends the 16-byte CancelRequest without half-closing, and resolves when the server closes", async () => {
    let halfClosedEarly: boolean | undefined;
    let packet: Buffer | undefined;
    const server = await listener((socket, received) => {
      let ended = false;
      socket.on("end", () => (ended = true));
      // As a pooler does: look at the connection a moment after the packet, then close it.
      setTimeout(() => {
        halfClosedEarly = ended;
        packet = Buffer.concat(received);
        socket.destroy();
      }, 60);
    });
    const started = Date.now();
    await sendCancelRequest({ host: "127.0.0.1", port: server.port, pid: -1_234_567, secret: 0xdeadbeef }, false);
    expect(Date.now() - started).toBeGreaterThanOrEqual(50);
    await server.close();
    expect(halfClosedEarly).toBe(false);
    expect(packet!.length).toBe(16);
    expect(packet!.readInt32BE(0)).toBe(16);
    expect(packet!.readInt32BE(4)).toBe(80877102);
    expect(packet!.readInt32BE(8)).toBe(-1_234_567);
    expect(packet!.readUInt32BE(12)).toBe(0xdeadbeef);
  });

  it("gives up after 1 s on a server that never closes, and never throws on one that refuses", async () => {
    const server = await listener(() => {});
    const started = Date.now();
    await sendCancelRequest({ host: "127.0.0.1", port: server.port, pid: 42, secret: 7 }, false);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(Date.now() - started).toBeLessThan(1500);
    await server.close();
    await expect(sendCancelRequest({ host: "127.0.0.1", port: server.port, pid: 42, secret: 7 }, false)).resolves.toBe(
      undefined,
    );
  });

  it("keyOf takes any non-zero 32-bit pid (poolers hand out random keys) and refuses what cannot be sent", () => {
    expect(keyOf("127.0.0.1", "6432", -5, 9)).toEqual({ host: "127.0.0.1", port: 6432, pid: -5, secret: 9 });
    expect(keyOf("db", undefined, 4711, 1)).toEqual({ host: "db", port: 5432, pid: 4711, secret: 1 });
    expect(keyOf("db", 5432, null, 1)).toBeUndefined();
    expect(keyOf("db", 5432, 0, 1)).toBeUndefined();
    expect(keyOf("/var/run/postgresql", 5432, 1, 1)).toBeUndefined();
    expect(keyOf("db", 5432, 1, undefined)).toBeUndefined();
  });
});
