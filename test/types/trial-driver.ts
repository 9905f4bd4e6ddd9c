/**
 * A trial driver added as docs/api.md ("Adding a driver") says, and each step forgotten once: the
 * type check of the project (`npx tsc --noEmit -p .`) must meet an error at every
 * `@ts-expect-error`, and test/db/drivers.test.ts checks (with the directives removed) that each
 * error names what was forgotten. The trial client is a stand-in: only types are checked here.
 */
import { DRIVERS, type DriverRegistry } from "../../src/db/connect.ts";
import { type ClientConnection, type DriverModule, type DriverName, defineDriver } from "../../src/db/driver.ts";

/** The trial driver's own client and options. */
export interface TrialClient {
  run(text: string, params?: readonly unknown[]): Promise<Record<string, unknown>[]>;
  end(): Promise<void>;
}
export interface TrialOptions {
  readonly fast?: boolean;
}
declare function openTrial(url: string, options: TrialOptions): Promise<TrialClient>;

/** Step 1, done: the module. `connect` opens one connection and says how to query, cancel and close it. */
export const trialDriver = defineDriver({
  name: "trial",
  packageName: "trial-client",
  async connect(target, options: TrialOptions): Promise<ClientConnection<TrialClient>> {
    const client = await openTrial(target.connectionString, options);
    return {
      client,
      query: async <R>(text: string, params?: readonly unknown[]) => (await client.run(text, params)) as R[],
      cancel: async () => {},
      close: () => client.end(),
    };
  },
});
// Options are checked: the trial's own, passed through.
trialDriver({ fast: true });
// @ts-expect-error FORGOT-OPTION-TYPE: an option the trial client does not have
trialDriver({ prepare: false });

// Step 1, forgotten: a connection without `cancel`.
defineDriver({
  name: "trial",
  packageName: "trial-client",
  // @ts-expect-error FORGOT-CANCEL: the connection has no `cancel`
  async connect(target) {
    const client = await openTrial(target.connectionString, {});
    return { client, query: async () => [], close: () => client.end() };
  },
});

// Step 1, forgotten: a driver without its package name.
// @ts-expect-error FORGOT-PACKAGE: no `packageName`
defineDriver({
  name: "trial",
  async connect(target) {
    const client = await openTrial(target.connectionString, {});
    return { client, query: async () => [], cancel: async () => {}, close: () => client.end() };
  },
});

// Steps 3 and 4: the name in DRIVER_PACKAGES with its line in DRIVERS (`"trial"` added to the names here).
export const registry: DriverRegistry<DriverName | "trial"> = {
  ...DRIVERS,
  trial: () => import("./trial-entry.ts"),
};

// Step 4, forgotten: a name with no line.
// @ts-expect-error FORGOT-LINE: `trial` has no loader
export const forgotLine: DriverRegistry<DriverName | "trial"> = { ...DRIVERS };

// Step 3, forgotten: a line with no name.
export const forgotName: DriverRegistry<DriverName> = {
  ...DRIVERS,
  // @ts-expect-error FORGOT-NAME: `trial` is not a driver name
  trial: () => import("./trial-entry.ts"),
};

// Step 2, forgotten: an entry that exports its driver under another name.
export const unnamed: DriverRegistry<"trial"> = {
  // @ts-expect-error FORGOT-EXPORT: the entry exports no `driver`
  trial: () => import("./trial-entry-unnamed.ts"),
};

// Step 1 and 2 half done: a driver that cannot take options (a bare `DriverModule`) is no entry's `driver`.
declare const bare: DriverModule<TrialClient>;
export const notConfigurable: DriverRegistry<"trial"> = {
  // @ts-expect-error FORGOT-DEFINE: `driver` is not callable with options (not made by `defineDriver`)
  trial: async () => ({ driver: bare }),
};
