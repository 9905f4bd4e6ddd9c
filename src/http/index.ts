/**
 * leasegate's HTTP layer (Web-standard `Request`/`Response`, any runtime): the operator handler,
 * a health answer, and the error answers every leasegate app gives.
 *
 * @example
 * import { errorResponse, healthResponse, operatorHandler } from "leasegate/http";
 */
export { operatorHandler } from "./operator.ts";
export { controlsOf } from "./operator.ts";
export type { OperatorControls, OperatorCoordinator, OperatorHandlerOptions } from "./operator.ts";
export { healthResponse } from "./health.ts";
export type { HealthOptions } from "./health.ts";
export { HttpError, HttpErrorCodes, allowMethods, errorResponse, json, readJson } from "./respond.ts";
export type { HttpErrorCode } from "./respond.ts";
export { formatMetrics, METRICS_CONTENT_TYPE } from "./metrics.ts";
