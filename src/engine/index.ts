/**
 * The coordinator engine: what the Durable Object and the Postgres backend do alike around the
 * core — the one declared coordinator interface (`CoordinatorBackend`), operations as steps, answers and messages,
 * parked waiters, the wake timer, group commit.
 * A backend supplies only storage and the way a waiter hears of its grant.
 */
export type { Coordinator, CoordinatorBackend, OperatorCoordinator } from "./coordinator.ts";
export { checkCounts } from "./coordinator.ts";
export type { AcquireAnswer, Step, StepFn } from "./steps.ts";
export * as steps from "./steps.ts";
export { guarded, mergeEffects } from "./steps.ts";
export * from "./answers.ts";
export * from "./waiters.ts";
export * from "./wake-timer.ts";
export * from "./group-commit.ts";
