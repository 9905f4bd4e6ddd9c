/**
 * `npm run start:local`: the example app on Node with the PostgresCoordinator, on
 * 127.0.0.1:$PORT (default 8787). Same env vars as the Worker; DATABASE_URL defaults to the
 * local Postgres on 127.0.0.1:5432.
 */
import { listen } from "./node-listener.ts";
import { createLocalApp } from "./server.ts";

const app = await createLocalApp(process.env);
const listener = await listen(Number(process.env.PORT ?? "8787"), "127.0.0.1", (request) => app.fetch(request));
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
