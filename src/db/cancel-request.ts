/** A backend as a Postgres cancel request names it: where its server listens and its key. */
export interface BackendKey {
  readonly host: string;
  readonly port: number;
  /** The backend's process id and secret, from its BackendKeyData at connect. */
  readonly pid: number;
  readonly secret: number;
}

// A cancel request is one connect and 16 bytes; past this the server or the path is gone, and
// closing the connection (with `client_connection_check_interval`) is what is left.
const CANCEL_TIMEOUT_MS = 1000;

/**
 * Sends a Postgres CancelRequest for `key` on a new connection (length 16, code 80877102, pid,
 * secret) and resolves once the server has closed that connection: the server signals the
 * backend before it closes, so the statement running there is being cancelled by then. Never
 * throws; gives up after 1 s. `edge` picks `cloudflare:sockets` (a Worker) over `node:net`.
 * Plain TCP, no TLS: Postgres reads a cancel request before any TLS negotiation, but a proxy that
 * routes by TLS SNI (Neon's) cannot route it — there the caller's close is what stops the backend.
 *
 * @example
 * await sendCancelRequest({ host: "127.0.0.1", port: 5432, pid: client.processID, secret: client.secretKey }, false);
 */
export async function sendCancelRequest(key: BackendKey, edge: boolean): Promise<void> {
  const packet = new Uint8Array(16);
  const view = new DataView(packet.buffer);
  view.setInt32(0, 16);
  view.setInt32(4, 80877102);
  view.setInt32(8, key.pid);
  view.setInt32(12, key.secret | 0);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, CANCEL_TIMEOUT_MS);
  });
  try {
    await Promise.race([
      edge ? import("./cf-socket.ts").then((m) => m.sendPacket(key, packet)) : viaNode(key, packet),
      late,
    ]);
  } catch {
    // Best effort: the caller closes the connection next either way.
  } finally {
    clearTimeout(timer);
  }
}

async function viaNode(key: BackendKey, packet: Uint8Array): Promise<void> {
  const { connect } = await import("node:net");
  await new Promise<void>((resolve) => {
    // Written, not ended: a half-close right behind the packet makes PgBouncer drop the request as
    // an unexpected EOF before it forwards it. The server closes once it has the request.
    const socket = connect({ host: key.host, port: key.port }, () => socket.write(packet));
    socket.on("error", () => resolve());
    socket.on("close", () => resolve());
    // The close that ends the wait is the server's, after it signalled the backend.
    socket.on("end", () => socket.destroy());
    socket.setTimeout(CANCEL_TIMEOUT_MS, () => socket.destroy());
  });
}

/**
 * A backend key read off a driver's running client, or undefined when it has none yet.
 *
 * @example
 * keyOf("127.0.0.1", 5432, 4711, 123456789) // { host: "127.0.0.1", port: 5432, pid: 4711, secret: 123456789 }
 */
export function keyOf(host: unknown, port: unknown, pid: unknown, secret: unknown): BackendKey | undefined {
  if (typeof host !== "string" || host === "" || host.startsWith("/")) return undefined;
  const p = Number(port ?? 5432);
  // Any 32-bit pid but 0: a pooler (PgBouncer) hands out random keys, negative ones too as read signed.
  if (!Number.isInteger(p) || !Number.isInteger(pid) || pid === 0 || !Number.isInteger(secret)) return undefined;
  if (typeof pid !== "number" || typeof secret !== "number") return undefined;
  return { host, port: p, pid, secret };
}
