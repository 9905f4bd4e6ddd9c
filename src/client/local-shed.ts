import { type AcquireOptions, type AcquireResult, LeaseError } from "../core/index.ts";
import { DEFAULT_LOCAL_SHED_RATIO } from "../core/config.ts";
import { AcceptWindow, refusalChance } from "../core/throttle.ts";

/** How an isolate sheds acquires itself while the coordinator refuses most of them. Durations are ms. */
export interface LocalShedOptions {
  /**
   * `K` of client-side adaptive throttling: the coordinator keeps receiving about `K` times the
   * acquires it grants; the surplus is refused where it arises, without a call.
   */
  readonly ratio: number;
  /** How far back acquires and grants count. */
  readonly windowMs: number;
  /** The window's granularity. */
  readonly bucketMs: number;
  /** Below this many answered acquires in the window nothing is shed: one refusal of a quiet isolate says little. */
  readonly minRequests: number;
}

export const LOCAL_SHED: LocalShedOptions = {
  ratio: DEFAULT_LOCAL_SHED_RATIO,
  windowMs: 2000,
  bucketMs: 100,
  minRequests: 20,
};

/** Kinds of request kept apart (priority and tenant), at most this many: the oldest kind is forgotten first. */
const MAX_KINDS = 256;

interface Kind {
  readonly window: AcceptWindow;
  /** The coordinator's last refusal of this kind, code and `retryAfterMs`: what a local refusal tells its caller. */
  code: "QUEUE_FULL" | "ACQUIRE_TIMEOUT";
  retryAfterMs: number;
  /** When the coordinator last refused one of this kind. */
  refusedAt: number;
}

/**
 * One isolate's view of a pool under overload: acquires the coordinator refused on arrival
 * (`QUEUE_FULL`, `ACQUIRE_TIMEOUT`) against those it granted, over the last `windowMs`, per
 * priority and tenant (a tenant or priority the coordinator still serves is never shed for another's
 * refusals). While grants fall below `1/K` of answers, an acquire is refused here with probability
 * `max(0, (requests − K·grants) / (requests + 1))` — at once, with the code and Retry-After of the
 * coordinator's last refusal — instead of after a round trip to a coordinator that would refuse it. The
 * coordinator still receives `K` times what it grants, so its queue stays full and no slot idles.
 * Local refusals count as requests (so a shed that goes on sheds more surely), but nothing is shed
 * unless the coordinator itself refused one of the kind within the window: callers told to come
 * back after a Retry-After of about a second arrive in waves, and a window of 2 s spans the gaps.
 *
 * @example
 * const shed = new LocalShed(LOCAL_SHED, { now: Date.now, random: Math.random });
 * const refusal = shed.refuse(request); if (refusal) throw refusal;
 * shed.answered(request, await coordinator.acquire(request));
 */
export class LocalShed {
  readonly options: LocalShedOptions;
  readonly #rt: { now(): number; random(): number };
  readonly #kinds = new Map<string, Kind>();
  #shed = 0;

  constructor(options: LocalShedOptions, runtime: { now(): number; random(): number }) {
    this.options = options;
    this.#rt = runtime;
  }

  /** Acquires refused here since the isolate started. */
  get shed(): number {
    return this.#shed;
  }

  /** The refusal for `request` now, or undefined: send it. A request that would not wait is never shed here. */
  refuse(request: AcquireOptions): LeaseError | undefined {
    if (request.waitMs === 0) return undefined;
    const kind = this.#kinds.get(kindOf(request));
    if (!kind) return undefined;
    const now = this.#rt.now();
    // A pool the coordinator has not refused within the window (the healthy case) costs one comparison.
    if (now - kind.refusedAt > this.options.windowMs) return undefined;
    const counts = kind.window.counts(now);
    if (counts.requests < this.options.minRequests) return undefined;
    const chance = refusalChance(counts, this.options.ratio);
    if (chance === 0 || this.#rt.random() >= chance) return undefined;
    kind.window.request(now);
    this.#shed++;
    return new LeaseError(
      kind.code,
      `Shed in this isolate without a coordinator call: the coordinator granted ${counts.accepts} of the last ` +
        `${counts.requests} acquires of this kind within ${this.options.windowMs} ms`,
      { retryAfterMs: kind.retryAfterMs },
    );
  }

  /**
   * Counts the coordinator's answer to `request`: a grant, or an overload refusal; other answers
   * (an invalid request, say) tell nothing of overload.
   */
  answered(request: AcquireOptions, result: AcquireResult): void {
    if (request.waitMs === 0) return;
    const code = result.ok ? undefined : result.code;
    if (code !== undefined && code !== "QUEUE_FULL" && code !== "ACQUIRE_TIMEOUT") return;
    const now = this.#rt.now();
    const kind = this.#kind(kindOf(request));
    kind.window.request(now);
    if (result.ok) {
      kind.window.accept(now);
      return;
    }
    kind.refusedAt = now;
    if (code) kind.code = code;
    if (result.retryAfterMs !== undefined) kind.retryAfterMs = result.retryAfterMs;
  }

  #kind(key: string): Kind {
    let kind = this.#kinds.get(key);
    if (!kind) {
      if (this.#kinds.size >= MAX_KINDS) this.#kinds.delete(this.#kinds.keys().next().value!);
      kind = {
        window: new AcceptWindow(this.options.windowMs, this.options.bucketMs),
        code: "QUEUE_FULL",
        retryAfterMs: 100,
        refusedAt: -Infinity,
      };
      this.#kinds.set(key, kind);
    }
    return kind;
  }
}

function kindOf(request: AcquireOptions): string {
  return `${request.priority ?? "normal"}\u0000${request.tenant ?? ""}`;
}

/** Local sheds per pool name in this isolate (or process), shared like the round trips. */
const shedsByPool = new Map<string, LocalShed>();

/**
 * The isolate's local shed of a pool (`LeasesOptions.localShed`): `false` = none, `true` or
 * undefined = the default ratio, a number = that ratio (1 to 10). Unnamed pools get one of their own.
 *
 * @example
 * localShedOf("main", undefined) // the isolate's shed of pool `main`, K = 1.5
 */
export function localShedOf(pool: string | undefined, setting: boolean | number | undefined): LocalShed | undefined {
  if (setting === false) return undefined;
  const ratio = setting === undefined || setting === true ? LOCAL_SHED.ratio : checkRatio(setting);
  const make = () => new LocalShed({ ...LOCAL_SHED, ratio }, { now: Date.now, random: Math.random });
  if (pool === undefined) return make();
  const key = `${pool}|${ratio}`;
  let shed = shedsByPool.get(key);
  if (!shed) {
    shed = make();
    shedsByPool.set(key, shed);
  }
  return shed;
}

function checkRatio(ratio: number): number {
  if (!(ratio >= 1 && ratio <= 10))
    throw new LeaseError("INVALID_ARGUMENT", `localShed must be a boolean or a ratio from 1 to 10, got ${ratio}`);
  return ratio;
}
