/**
 * `npm run start:local`: the example app on Node with the PostgresCoordinator, on
 * 127.0.0.1:$PORT (default 8787). Same env vars as the Worker; DATABASE_URL defaults to the
 * local Postgres on 127.0.0.1:5432.
 */
import { listen } from "./node-listener.ts";
import { preflight } from "leasegate/local";
import { DEFAULT_DATABASE_URL, createLocalApp, startFailure } from "./server.ts";

// A bad setting or an unreachable database ends the start here, in one line, before anything runs.
const failure = await preflight(process.env, {
  url: process.env.DATABASE_URL || DEFAULT_DATABASE_URL,
  hint: process.env.DATABASE_URL
    ? `unset DATABASE_URL to use the local cluster (${DEFAULT_DATABASE_URL})`
    : "set DATABASE_URL to your Postgres",
});
if (failure) {
  console.error(failure.line);
  process.exit(1);
}

// Anything that fails after the preflight (the example's migration, say) ends the start in one line too.
const app = await createLocalApp(process.env).catch((error: unknown) => {
  console.error(startFailure(error));
  return process.exit(1);
});
const listener = await listen(Number(process.env.PORT || "8787"), "127.0.0.1", (request) => app.fetch(request));
console.log(`leasegate local server (Node ${process.version}) on http://127.0.0.1:${listener.port}`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void (async () => {
      await listener.close();
      await app.close();
      process.exit(0);
    })();
  });
}
