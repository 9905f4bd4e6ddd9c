// A package entry that forgot to export its driver as `driver` (trial-driver.ts expects the error).
import { trialDriver } from "./trial-driver.ts";

export const trial = trialDriver;
