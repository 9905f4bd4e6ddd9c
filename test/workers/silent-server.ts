import { type Socket, createServer } from "node:net";
import type { TestProject } from "vitest/node";

/**
 * Global setup of the workerd suite: a TCP server on the Node side that accepts connections and
 * never says a word (a hung database, a black-holed path). Its port, picked by the system, reaches
 * the tests as `inject("silentPort")`; workerd connects to it over `cloudflare:sockets`.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  project.provide("silentPort", typeof address === "object" && address ? address.port : 0);
  return async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    silentPort: number;
  }
}
