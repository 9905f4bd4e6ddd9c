/**
 * `npm run start:bun`: the example app on Bun with the PostgresCoordinator, its leased connections
 * on Bun's own SQL client (`leasegate/bun`), on 127.0.0.1:$PORT (default 8787). Same env vars as
 * the Worker and the Node server.
 */
import type { DriverModule } from "leasegate";
import { driver } from "leasegate/bun";
import { preflight } from "leasegate/local";
import type { Sql } from "postgres";
import { DEFAULT_DATABASE_URL, createLocalApp, startFailure } from "./server.ts";

/** The few Bun APIs used here (the project's type check runs with Node's types). */
declare const Bun: {
  serve(options: { port: number; hostname: string; fetch: (request: Request) => Promise<Response> }): {
    port: number;
    stop(closeActive?: boolean): Promise<void>;
  };
  version: string;
};

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
// Bun's SQL client answers the postgres.js tagged templates the app writes (`sql(row, …columns)`,
// `sql.unsafe(fragment)`); the app's types are postgres.js's.
const app = await createLocalApp(process.env, driver as unknown as DriverModule<Sql>).catch((error: unknown) => {
  console.error(startFailure(error));
  return process.exit(1);
});
const server = Bun.serve({
  port: Number(process.env.PORT || "8787"),
  hostname: "127.0.0.1",
  fetch: (request) => app.fetch(request),
});
console.log(`leasegate local server (Bun ${Bun.version}) on http://127.0.0.1:${server.port}`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void (async () => {
      await server.stop();
      await app.close();
      process.exit(0);
    })();
  });
}
