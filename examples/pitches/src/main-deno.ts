/**
 * `deno task start`: the example app on Deno with the PostgresCoordinator, on 127.0.0.1:$PORT
 * (default 8787). Same env vars as the Worker and the Node server.
 */
import { preflight } from "leasegate/local";
import { DEFAULT_DATABASE_URL, createLocalApp, startFailure } from "./server.ts";

/** The few Deno APIs used here (the project's type check runs with Node's types). */
declare const Deno: {
  env: { toObject(): Record<string, string> };
  serve(
    options: { port: number; hostname: string; onListen?: (addr: { port: number }) => void },
    handler: (request: Request) => Promise<Response>,
  ): { shutdown(): Promise<void> };
  addSignalListener(signal: "SIGINT" | "SIGTERM", handler: () => void): void;
  exit(code: number): never;
  version: { deno: string };
};

const env = Deno.env.toObject();
// A bad setting or an unreachable database ends the start here, in one line, before anything runs.
const failure = await preflight(env, {
  url: env.DATABASE_URL || DEFAULT_DATABASE_URL,
  hint: env.DATABASE_URL
    ? `unset DATABASE_URL to use the local cluster (${DEFAULT_DATABASE_URL})`
    : "set DATABASE_URL to your Postgres",
});
if (failure) {
  console.error(failure.line);
  Deno.exit(1);
}
// Anything that fails after the preflight (the example's migration, say) ends the start in one line too.
const app = await createLocalApp(env).catch((error: unknown) => {
  console.error(startFailure(error));
  return Deno.exit(1);
});
const server = Deno.serve(
  {
    port: Number(env.PORT || "8787"),
    hostname: "127.0.0.1",
    onListen: ({ port }) =>
      console.log(`leasegate local server (Deno ${Deno.version.deno}) on http://127.0.0.1:${port}`),
  },
  (request) => app.fetch(request),
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    void (async () => {
      await server.shutdown();
      await app.close();
      Deno.exit(0);
    })();
  });
}
