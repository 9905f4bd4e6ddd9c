// The package entry of the trial driver in trial-driver.ts, as `src/drivers/<name>.ts` would be.
import { trialDriver } from "./trial-driver.ts";

export const driver = trialDriver;
