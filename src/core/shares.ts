/**
 * One limit shared by demand across the shards of a pool (Doorman's capacity tree, one level deep).
 *
 * The root object of a pool owns the global limit and the layout (how many shards it plans for, and
 * how it splits). Each shard enforces a *share* the root gave it and reports to the root every
 * `REPORT_EVERY_MS` (sooner while callers wait for want of a share): the share it enforces, its
 * held leases and the peak of held + waiting since its last report. The root answers each report
 * with the shard's new share.
 *
 * The invariant (never more live leases than the limit): for every shard the root keeps a
 * *reserve*, an upper bound of the leases that shard may hold until it reports again, and the
 * reserves sum to at most the limit. A shard that enforces `e` and holds `h` can hold at most
 * `max(e, h)` from then on (held only falls while above the share), so after a report the reserve
 * is `max(e, h)`, and after the answer `s` it is `max(s, e, h)` until the shard reports again with
 * `s` in force. A share therefore shrinks at the root only after the shard has applied it and given
 * the slots back; a share grows only from what the other reserves leave. Pure: the shells call the
 * root and keep the state (the Durable Object persists the reserves before it answers).
 */
import { checkInt } from "./config.ts";
import { LeaseError, expected } from "./errors.ts";
import type { Result } from "./protocol.ts";
import { reconfigure } from "./pool.ts";
import { capacity } from "./scheduling.ts";
import { type Effects, type Layout, type PoolConfig, type PoolState, SHARE_SPLITS, type ShareView } from "./types.ts";

/** The root's own pool, as a shard (it serves callers that name the pool alone, e.g. `LEASE_SHARDS=1`). */
export const ROOT_SHARD = "root";

/** A shard: `ROOT_SHARD`, or the index of the object `${pool}#${index}` as a decimal string. */
export type ShardKey = string;

/** How often a shard with leases, waiters or a recent peak reports to its root, ms. */
export const REPORT_EVERY_MS = 1_000;
/** How often a shard that only holds a share (no leases, nobody waiting) reports, ms: its root asks sooner when it needs the slots. */
export const IDLE_REPORT_EVERY_MS = 10_000;
/** A shard whose callers wait for want of a share reports at once, but not more often than this, ms. */
export const EAGER_REPORT_GAP_MS = 200;
/** Demand is the largest peak of held + waiting reported within this window, ms. */
export const DEMAND_WINDOW_MS = 3_000;
/** Slots a shard with demand gets beyond it (demand split), so one more caller needs no report. */
export const SPARE_SLOTS = 1;

/** What a shard tells its root. */
export interface ShareReport {
  readonly shard: ShardKey;
  /** The share the shard enforces now (the last answer it applied, or the one it restarted with). */
  readonly enforced: number;
  readonly held: number;
  /** The most leases held plus callers waiting at any moment since the shard's last report. */
  readonly peak: number;
}

/** One shard as its root counts it. */
export interface ShareAccount {
  /** The share last answered. */
  share: number;
  /** The most leases the shard may hold until it reports again (see the module's invariant). */
  reserve: number;
  /** Held at the last report. */
  held: number;
  /** Peaks reported within the demand window: `[at, peak]`, oldest first. */
  peaks: Array<[number, number]>;
  /** When the shard last reported, ms; 0: not since the root started. */
  reportedAt: number;
}

/** A root's answer to a report: the shard's share of the global `limit`. */
export type ShareAnswer = Result<{ share: number; limit: number }>;

/** The answer to an operator's layout change: the layout in force after it. */
export type LayoutResult = Result<{ layout: Layout }>;

/** The root's state: the global limit, the layout and an account per shard that ever reported. */
export interface RootState {
  limit: number;
  layout: Layout;
  accounts: Map<ShardKey, ShareAccount>;
}

/** What a root persists (before it answers a report): enough to keep the invariant across its restart. */
export interface RootSnapshot {
  readonly v: 1;
  /** `[shard, share, reserve]`. */
  readonly accounts: ReadonlyArray<readonly [ShardKey, number, number]>;
}

/**
 * Checks a layout (`INVALID_ARGUMENT`, or `code`): 1 to 1024 shards and a known split (`demand`
 * when absent).
 *
 * @example
 * checkLayout({ count: 4, split: "demand" })
 */
export function checkLayout(
  layout: Partial<Layout>,
  code: "INVALID_ARGUMENT" | "INVALID_CONFIG" = "INVALID_ARGUMENT",
): Layout {
  if (typeof layout !== "object" || layout === null)
    throw new LeaseError(code, expected("layout", "an object { count, split }", layout));
  const count = checkInt("layout.count", layout.count, 1, 1024, code);
  const split = layout.split ?? "demand";
  if (!(SHARE_SPLITS as readonly unknown[]).includes(split))
    throw new LeaseError(code, expected("layout.split", SHARE_SPLITS.map((s) => `\`${s}\``).join(" or "), split));
  return { count, split };
}

/**
 * A root for `limit`, planning for `layout`; `restored`: its persisted accounts after a restart
 * (their reserves stand until each shard reports again).
 *
 * @example
 * const root = createRoot(54, { count: 3, split: "demand" });
 */
export function createRoot(limit: number, layout: Layout, restored?: RootSnapshot | null): RootState {
  const state: RootState = { limit: checkInt("limit", limit, 1, Number.MAX_SAFE_INTEGER), layout, accounts: new Map() };
  for (const [key, share, reserve] of restored?.accounts ?? []) {
    state.accounts.set(key, { share, reserve, held: 0, peaks: [], reportedAt: 0 });
  }
  return state;
}

/**
 * The root's persisted form.
 *
 * @example
 * store.writeMeta("shares", JSON.stringify(rootSnapshot(root)));
 */
export function rootSnapshot(state: RootState): RootSnapshot {
  return { v: 1, accounts: [...state.accounts].map(([key, a]) => [key, a.share, a.reserve] as const) };
}

/** Whether `key` is one of the layout's shards (the root's own pool is, with a layout of 1). */
export function inLayout(layout: Layout, key: ShardKey): boolean {
  if (key === ROOT_SHARD) return layout.count === 1;
  const i = Number(key);
  return Number.isInteger(i) && i >= 0 && i < layout.count;
}

function checkKey(key: unknown): ShardKey {
  if (key === ROOT_SHARD || (typeof key === "string" && /^\d{1,4}$/.test(key) && Number(key) < 1024)) return key;
  throw new LeaseError("INVALID_ARGUMENT", expected("shard", `"${ROOT_SHARD}" or an index from 0 to 1023`, key));
}

function checkReport(r: ShareReport): ShareReport {
  if (typeof r !== "object" || r === null)
    throw new LeaseError("INVALID_ARGUMENT", expected("report", "an object { shard, enforced, held, peak }", r));
  return {
    shard: checkKey(r.shard),
    enforced: checkInt("enforced", r.enforced, 0, Number.MAX_SAFE_INTEGER),
    held: checkInt("held", r.held, 0, Number.MAX_SAFE_INTEGER),
    peak: checkInt("peak", r.peak, 0, Number.MAX_SAFE_INTEGER),
  };
}

/** A shard's demand: the largest peak it reported within the window (0 when none). */
export function demandOf(account: ShareAccount, now: number): number {
  let demand = 0;
  for (const [at, peak] of account.peaks) if (now - at < DEMAND_WINDOW_MS && peak > demand) demand = peak;
  return demand;
}

/**
 * Max-min fair integers: each gets what it wants or an equal level of what is left, whichever is
 * less; the sum never exceeds `capacity`. Remainders of the level go to the largest wants first.
 */
export function maxMin(capacity: number, wants: readonly number[]): number[] {
  const out = wants.map(() => 0);
  let remaining = capacity;
  let open = wants.map((_, i) => i).filter((i) => wants[i]! > 0);
  while (open.length > 0 && remaining > 0) {
    const level = Math.floor(remaining / open.length);
    if (level === 0) {
      const byWant = [...open].sort((a, b) => wants[b]! - out[b]! - (wants[a]! - out[a]!) || a - b);
      for (const i of byWant.slice(0, remaining)) out[i]!++;
      break;
    }
    for (const i of open) {
      const give = Math.min(wants[i]! - out[i]!, level);
      out[i]! += give;
      remaining -= give;
    }
    open = open.filter((i) => out[i]! < wants[i]!);
  }
  return out;
}

/**
 * The share each known shard should have now: `even`, the layout's shards in equal parts and the
 * others none; `demand`, max-min fair by demand (plus `SPARE_SLOTS` for a shard with any), and
 * what nobody wants spread over the layout's shards.
 *
 * @example
 * targets(root, now).get("0")
 */
export function targets(state: RootState, now: number): Map<ShardKey, number> {
  const { layout, limit } = state;
  const keys = [...state.accounts.keys()];
  const out = new Map<ShardKey, number>();
  if (layout.split === "even") {
    const base = Math.floor(limit / layout.count);
    const extra = limit % layout.count;
    for (const key of keys) {
      const i = key === ROOT_SHARD ? 0 : Number(key);
      out.set(key, inLayout(layout, key) ? base + (i < extra ? 1 : 0) : 0);
    }
    return out;
  }
  // A shard without demand in the window wants nothing: an idle object stops reporting, and its
  // first caller waits one report for a share from the slots nobody wants.
  const wants = keys.map((key) => {
    const demand = demandOf(state.accounts.get(key)!, now);
    return demand > 0 ? demand + SPARE_SLOTS : 0;
  });
  const fair = maxMin(limit, wants);
  // What no demand takes is spread over the layout's shards, as an even split would: a burst at a
  // shard that was quiet is served at once. A layout shard that has not reported leaves its part free.
  const left = limit - fair.reduce((a, b) => a + b, 0);
  const base = Math.floor(left / layout.count);
  const extra = left % layout.count;
  for (const [i, key] of keys.entries()) {
    const at = key === ROOT_SHARD ? 0 : Number(key);
    out.set(key, fair[i]! + (inLayout(layout, key) ? base + (at < extra ? 1 : 0) : 0));
  }
  return out;
}

/** The sum of every shard's reserve: at most the limit (the invariant), unless an operator or a learning lowered it. */
export function reserved(state: RootState, except?: ShardKey): number {
  let sum = 0;
  for (const [key, a] of state.accounts) if (key !== except) sum += a.reserve;
  return sum;
}

/** Accounts of shards that hold nothing, have no share and have not reported for a while: gone, so a pool back to one object stops sharing. */
function forgetDrained(state: RootState, now: number): void {
  for (const [key, a] of state.accounts) {
    if (key !== ROOT_SHARD && a.reserve === 0 && a.share === 0 && now - a.reportedAt > 2 * DEMAND_WINDOW_MS)
      state.accounts.delete(key);
  }
}

/** Whether the root shares its limit: some shard other than its own pool has an account. */
export function sharing(state: RootState): boolean {
  for (const key of state.accounts.keys()) if (key !== ROOT_SHARD) return true;
  return false;
}

/** Records a report (its demand, what it holds) and answers nothing yet; returns what the shard may hold from now on. */
function record(state: RootState, r: ShareReport, now: number): number {
  const rep = checkReport(r);
  let account = state.accounts.get(rep.shard);
  if (!account) {
    account = { share: 0, reserve: 0, held: 0, peaks: [], reportedAt: 0 };
    state.accounts.set(rep.shard, account);
  }
  account.held = rep.held;
  account.reportedAt = now;
  account.peaks = account.peaks.filter(([at]) => now - at < DEMAND_WINDOW_MS);
  account.peaks.push([now, Math.max(rep.peak, rep.held)]);
  // What the shard may hold from now on: its share in force, or more while it gives slots back.
  return Math.max(rep.enforced, rep.held);
}

/** The share `key` gets now, given what it may hold already (`bound`); sets its reserve. */
function answer(state: RootState, key: ShardKey, bound: number, now: number): number {
  const account = state.accounts.get(key)!;
  const target = targets(state, now).get(key) ?? 0;
  // Grows only into slots no other reserve covers (or that this shard's own bound covers already);
  // shrinks at once, while the reserve keeps the slots until the shard reports them back.
  const free = state.limit - reserved(state, key);
  account.share = target <= bound ? target : Math.max(bound, Math.min(target, free));
  account.reserve = Math.max(account.share, bound);
  return account.share;
}

/**
 * A shard's report at `now`, with the root's own `pool` (and the peak of its held + waiting since
 * its last rebalance): records the shard's demand, rebalances the root's own share (the root's
 * pool counts as a shard once any other has an account) and answers the shard's new share. The
 * share moves toward the shard's target, growing only into slots no other reserve covers; the
 * reserve becomes the most the shard may hold until its next report. Bad reports throw
 * `INVALID_ARGUMENT`. `effects`: grants on the root's own pool (a larger own share); `ask`: when
 * the shard got less than its target, the shards to ask for a report now (`aboveTarget`).
 *
 * @example
 * const { share } = report(root, pool, side.peak, { shard: "0", enforced: 4, held: 4, peak: 9 }, now);
 */
export function report(
  state: RootState,
  pool: PoolState,
  peak: number,
  r: ShareReport,
  now: number,
): { share: number; effects: Effects; ask: ShardKey[] } {
  if (typeof r === "object" && r !== null && r.shard === ROOT_SHARD)
    throw new LeaseError("INVALID_ARGUMENT", "The root's own pool does not report over a call");
  // The root's own pool enforces its whole capacity until it first takes a share: counted before anyone grows.
  if (!state.accounts.has(ROOT_SHARD)) {
    const held = pool.leases.size;
    const enforced = capacity(pool);
    state.accounts.set(ROOT_SHARD, {
      share: enforced,
      reserve: Math.max(enforced, held),
      held,
      peaks: [],
      reportedAt: 0,
    });
  }
  const bound = record(state, r, now);
  const effects = shareOwn(state, pool, peak, now);
  const share = answer(state, r.shard, bound, now);
  return { share, effects, ask: share < (targets(state, now).get(r.shard) ?? 0) ? aboveTarget(state, now) : [] };
}

/**
 * The shards that hold more than their target now (other than the root's own pool, which
 * rebalances at once): when a shard gets less than its target, the root asks these to report now
 * rather than at their next periodic report, so the slots move within a round trip.
 *
 * @example
 * for (const key of aboveTarget(root, now)) void shardStub(key).reportNow();
 */
export function aboveTarget(state: RootState, now: number): ShardKey[] {
  const goal = targets(state, now);
  return [...state.accounts]
    .filter(([key, a]) => key !== ROOT_SHARD && a.reserve > (goal.get(key) ?? 0))
    .map(([key]) => key);
}

/**
 * The root's own pool takes its share at once (no call: the answer is in force as it returns, so
 * its reserve is the share or what it holds, whichever is more). While no other shard has an
 * account the root's pool has the whole limit, as an unsharded pool. Returns the grants a larger
 * share makes.
 *
 * @example
 * const fx = shareOwn(root, pool, side.peak, now);
 */
export function shareOwn(state: RootState, pool: PoolState, peak: number, now: number): Effects {
  forgetDrained(state, now);
  if (!sharing(state)) {
    state.accounts.delete(ROOT_SHARD);
    pool.share = undefined;
  } else {
    const held = pool.leases.size;
    const own = { shard: ROOT_SHARD, enforced: capacity(pool), held, peak: Math.max(peak, held + pool.queue.length) };
    const share = answer(state, ROOT_SHARD, record(state, own, now), now);
    // In force as it returns: what the root's pool may hold is this share or what it holds.
    state.accounts.get(ROOT_SHARD)!.reserve = Math.max(share, held);
    pool.share = share;
  }
  return reconfigure(pool, pool.config, now);
}

/**
 * A shard's pool under `share` of a root's `limit`: the configured pool (`LEASE_*`) with its limit
 * the share (at least 1; a share of 0 is `PoolState.share`), and the reserved slots, the batch cap
 * and the adaptive floor scaled by share / limit (clamped so the config stays valid). Waits, TTLs,
 * the queue cap and mode are per object and stay as configured.
 *
 * @example
 * shareConfig({ limit: 40, maxQueue: 1000, waitMs: 5000, leaseTtlMs: 1500, reserved: 4 }, 40, 10).reserved // 1
 */
export function shareConfig(config: PoolConfig, limit: number, share: number): PoolConfig {
  const part = Math.max(1, share);
  const scaled = (n: number) => Math.floor((n * share) / Math.max(1, limit));
  const { reserved, batchMax, adaptive } = config;
  return {
    ...config,
    limit: part,
    reserved: reserved === undefined ? undefined : Math.min(scaled(reserved), part - 1),
    batchMax: batchMax === undefined ? undefined : Math.min(Math.max(scaled(batchMax), batchMax > 0 ? 1 : 0), part),
    adaptive:
      adaptive === undefined ? undefined : { ...adaptive, floor: Math.max(1, Math.min(part, scaled(adaptive.floor))) },
  };
}

/**
 * A shard applies its root's answer: `share` of the root's `limit`, on top of `base` (its
 * `LEASE_*`). A larger share grants queued callers at once; a smaller one revokes nothing.
 *
 * @example
 * const fx = applyShare(pool, configFromEnv(env), answer.limit, answer.share, now);
 */
export function applyShare(pool: PoolState, base: PoolConfig, limit: number, share: number, now: number): Effects {
  pool.share = share;
  return reconfigure(pool, shareConfig(base, limit, share), now);
}

/**
 * Changes the global limit (an operator, or a new learning). Lowering it revokes nothing: reserves
 * above it shrink as shards report and give slots back, and no share grows meanwhile.
 *
 * @example
 * setRootLimit(root, 40);
 */
export function setRootLimit(state: RootState, limit: number): void {
  state.limit = checkInt("limit", limit, 1, Number.MAX_SAFE_INTEGER);
}

/**
 * The root's accounts for operators.
 *
 * @example
 * sharesView(root, now).map((s) => s.share)
 */
export function sharesView(state: RootState, now: number): ShareView[] {
  return [...state.accounts]
    .map(([shard, a]) => ({
      shard,
      share: a.share,
      reserve: a.reserve,
      demand: demandOf(a, now),
      held: a.held,
      inLayout: inLayout(state.layout, shard),
      reportedAgoMs: a.reportedAt === 0 ? null : now - a.reportedAt,
    }))
    .sort((x, y) => (x.shard === ROOT_SHARD ? -1 : y.shard === ROOT_SHARD ? 1 : Number(x.shard) - Number(y.shard)));
}

// ── The shard's side: when to report, what it enforces. ──

/** What a shard keeps about its share (the enforced share is persisted by the shell). */
export interface ShardSide {
  /** The share in force. */
  enforced: number;
  /** The most held + waiting since the last report. */
  peak: number;
  /** A report is on its way to the root (one at a time: an answer is applied before the next report). */
  inFlight: boolean;
  /** When the last report was sent, ms (0: never). */
  reportedAt: number;
}

/**
 * A shard's side, starting from the share it last persisted (0 on its first start).
 *
 * @example
 * const side = createShardSide(Number(store.readMeta("share") ?? 0));
 */
export function createShardSide(enforced: number): ShardSide {
  return { enforced, peak: 0, inFlight: false, reportedAt: 0 };
}

/** Records held + waiting after a transition (cheap: called on every call). */
export function notePeak(side: ShardSide, held: number, waiting: number): void {
  if (held + waiting > side.peak) side.peak = held + waiting;
}

/**
 * Whether the shard should report now: none in flight, and either callers wait with the share
 * used up (`EAGER_REPORT_GAP_MS` since the last) or a report is due (`REPORT_EVERY_MS`) while the
 * shard has a share, leases, waiters or a peak to tell.
 *
 * @example
 * if (reportDue(side, held, waiting, now)) void sendReport();
 */
export function reportDue(side: ShardSide, held: number, waiting: number, now: number): boolean {
  if (side.inFlight) return false;
  const since = now - side.reportedAt;
  if (waiting > 0 && held >= side.enforced && since >= EAGER_REPORT_GAP_MS) return true;
  const idle = held === 0 && waiting === 0 && side.peak === 0;
  if (idle && side.enforced === 0) return false;
  return since >= (idle ? IDLE_REPORT_EVERY_MS : REPORT_EVERY_MS);
}

/**
 * The report to send now; marks it in flight and starts the next peak from what is held and waiting.
 *
 * @example
 * const r = takeReport(side, "2", held, waiting, now);
 */
export function takeReport(side: ShardSide, shard: ShardKey, held: number, waiting: number, now: number): ShareReport {
  const r = { shard, enforced: side.enforced, held, peak: Math.max(side.peak, held + waiting) };
  side.inFlight = true;
  side.reportedAt = now;
  side.peak = held + waiting;
  return r;
}

/**
 * The root's answer arrived (`share`), or the call failed (`null`: the share in force stays).
 *
 * @example
 * settleReport(side, answer.ok ? answer.share : null);
 */
export function settleReport(side: ShardSide, share: number | null): void {
  side.inFlight = false;
  if (share !== null) side.enforced = share;
}
