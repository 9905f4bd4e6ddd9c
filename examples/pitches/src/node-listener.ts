import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import { Readable } from "node:stream";

/**
 * A running HTTP listener.
 *
 * @example
 * const { port, close } = await listen(0, "127.0.0.1", handler); await close();
 */
export interface Listener {
  readonly port: number;
  close(): Promise<void>;
}

function toRequest(req: IncomingMessage, host: string): Request {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else if (value !== undefined) headers.set(name, value);
  }
  const hasBody = req.method !== "GET" && req.method !== "HEAD";
  return new Request(`http://${req.headers.host ?? host}${req.url ?? "/"}`, {
    method: req.method ?? "GET",
    headers,
    body: hasBody ? (Readable.toWeb(req) as ReadableStream<Uint8Array>) : undefined,
    // Node's fetch needs this for a streamed request body.
    ...(hasBody ? { duplex: "half" } : {}),
  } as RequestInit);
}

async function send(res: ServerResponse, response: Response): Promise<void> {
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => {
    headers[name] = value;
  });
  res.writeHead(response.status, headers);
  res.end(Buffer.from(await response.arrayBuffer()));
}

/**
 * Serves a fetch-style handler on Node's `http` (Deno has `Deno.serve` for the same handler).
 *
 * @example
 * const listener = await listen(8787, "127.0.0.1", (req) => app.fetch(req));
 */
export function listen(
  port: number,
  hostname: string,
  fetch: (request: Request) => Promise<Response>,
): Promise<Listener> {
  const server = createServer((req, res) => {
    fetch(toRequest(req, `${hostname}:${port}`))
      .then((response) => send(res, response))
      .catch(() => {
        // handle() answers every error itself; this is a broken client socket.
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, hostname, () => {
      const address = server.address();
      resolve({
        port: typeof address === "object" && address ? address.port : port,
        close: () => new Promise<void>((done) => server.close(() => done())),
      });
    });
  });
}
