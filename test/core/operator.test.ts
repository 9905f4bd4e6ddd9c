import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { describe, expect, it } from "vitest";
import {
  type OperatorStats,
  type PoolConfig,
  acquire,
  compareConnections,
  createPool,
  findByPrefix,
  isLeaseError,
  release,
  setPaused,
  stats,
  tick,
} from "../../src/core/index.ts";
import { formatMetrics } from "../../src/http/metrics.ts";

const config: PoolConfig = { limit: 2, maxQueue: 5, waitMs: 1000, leaseTtlMs: 10_000 };

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return isLeaseError(error) ? error.code : "not a LeaseError";
  }
  return undefined;
}

describe("pause (drain)", () => {
  it("grants nothing while paused, keeps held leases, and grants the queue in order on resume", () => {
    const p = createPool(config);
    expect(acquire(p, { leaseId: "held-1", holder: "a" }, 0).outcome.status).toBe("granted");
    expect(setPaused(p, true, 1)).toEqual({ granted: [], timedOut: [], expired: [] });
    // A free slot exists, but a paused pool queues the caller instead of granting.
    expect(acquire(p, { leaseId: "w-1", holder: "b" }, 2).outcome.status).toBe("queued");
    expect(acquire(p, { leaseId: "w-2", holder: "c" }, 3).outcome.status).toBe("queued");
    expect(acquire(p, { leaseId: "now", holder: "d", waitMs: 0 }, 4).outcome).toMatchObject({
      status: "rejected",
      code: "ACQUIRE_TIMEOUT",
    });
    // A release while paused frees the slot but does not hand it on.
    expect(release(p, { leaseId: "held-1", fence: 1 }, 5).effects.granted).toEqual([]);
    expect(stats(p, 5)).toMatchObject({ paused: true, held: 0, waiting: 2 });
    const fx = setPaused(p, false, 6);
    expect(fx.granted.map((l) => l.id)).toEqual(["w-1", "w-2"]);
    expect(stats(p, 6)).toMatchObject({ paused: false, held: 2, waiting: 0 });
  });

  it("lets paused waiters time out at their deadline", () => {
    const p = createPool(config);
    setPaused(p, true, 0);
    acquire(p, { leaseId: "w", holder: "b", waitMs: 100 }, 0);
    expect(tick(p, 100).timedOut.map((w) => w.leaseId)).toEqual(["w"]);
    expect(codeOf(() => setPaused(p, "yes" as unknown as boolean, 101))).toBe("INVALID_ARGUMENT");
  });
});

describe("findByPrefix", () => {
  const p = createPool({ ...config, limit: 3 });
  acquire(p, { leaseId: "aaaaaaaa-1111", holder: "x" }, 0);
  acquire(p, { leaseId: "aaaaaaaa-2222", holder: "y" }, 0);
  acquire(p, { leaseId: "bbbbbbbb-3333", holder: "z" }, 0);

  it.each([
    ["bbbbbbbb", "z"],
    ["aaaaaaaa-2", "y"],
    ["aaaaaaaa-1111", "x"],
  ])("finds %s", (prefix, holder) => {
    expect(findByPrefix(p, prefix).holder).toBe(holder);
  });

  it.each([
    ["aaaaaaaa", "INVALID_ARGUMENT"], // ambiguous: two leases
    ["bbbb", "INVALID_ARGUMENT"], // shorter than stats show
    ["cccccccc", "LEASE_NOT_FOUND"],
    [42, "INVALID_ARGUMENT"],
  ])("refuses %s with %s", (prefix, code) => {
    expect(codeOf(() => findByPrefix(p, prefix as string))).toBe(code);
  });
});

describe("compareConnections", () => {
  const counts = { role: "app", applicationName: "web" };
  it.each([
    { held: 3, limit: 10, role: 3, app: 3, drift: 0, overLimit: false, status: "ok" },
    { held: 3, limit: 10, role: 5, app: 5, drift: 2, overLimit: false, status: "drift" },
    { held: 3, limit: 10, role: 2, app: 2, drift: -1, overLimit: false, status: "drift" },
    { held: 3, limit: 10, role: 11, app: 3, drift: 0, overLimit: true, status: "over_limit" },
    { held: 0, limit: 1, role: 2, app: 4, drift: 4, overLimit: true, status: "over_limit" },
  ])(
    "held $held, limit $limit, role $role, app $app → $status",
    ({ held, limit, role, app, drift, overLimit, status }) => {
      const r = compareConnections({ held, limit }, { ...counts, roleConnections: role, appConnections: app }, 1234);
      expect(r).toMatchObject({ checkedAt: 1234, drift, overLimit, status, held, limit });
    },
  );
});

describe("Prometheus metrics", () => {
  function sample(): OperatorStats {
    const p = createPool({ ...config, limit: 1 });
    acquire(p, { leaseId: "l1", holder: "a" }, 0); // waited 0 ms
    acquire(p, { leaseId: "l2", holder: "b" }, 0);
    release(p, { leaseId: "l1", fence: 1 }, 30); // l2 waited 30 ms
    acquire(p, { leaseId: "l3", holder: "c", waitMs: 200 }, 40);
    tick(p, 240); // l3 timed out after 200 ms
    return {
      ...stats(p, 250),
      limitOverride: null,
      reconciliation: compareConnections(
        { held: 1, limit: 1 },
        { role: "app", applicationName: "web", roleConnections: 4, appConnections: 2 },
        5000,
      ),
    };
  }

  it("passes a text-format parser with the names, types, labels and units operators rely on", () => {
    const text = formatMetrics('we"ird\\pool', sample());
    const families = new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f]));
    const value = (name: string) => Number(families.get(name)?.metrics[0]?.value);

    expect(families.get("leasegate_held_leases")?.type).toBe("GAUGE");
    expect(families.get("leasegate_held_leases")?.metrics[0]?.labels).toEqual({ pool: 'we"ird\\pool' });
    expect(value("leasegate_held_leases")).toBe(1);
    expect(value("leasegate_limit_leases")).toBe(1);
    expect(value("leasegate_paused")).toBe(0);
    expect(families.get("leasegate_leases_granted_total")?.type).toBe("COUNTER");
    expect(value("leasegate_leases_granted_total")).toBe(2);
    expect(value("leasegate_leases_released_total")).toBe(1);
    expect(value("leasegate_acquire_timeouts_total")).toBe(1);
    for (const f of families.values()) {
      expect(f.name).toMatch(/^leasegate_[a-z_]+$/);
      if (f.type === "COUNTER") expect(f.name).toMatch(/_total$/);
    }

    const wait = families.get("leasegate_wait_seconds");
    expect(wait?.type).toBe("HISTOGRAM");
    const h = wait!.metrics[0]!;
    // This parser drops `_sum`/`_count` of a histogram whose series carry labels other than `le`
    // (its flattening only keeps unlabeled ones), so those two lines are checked as text.
    expect(text).toContain('leasegate_wait_seconds_sum{pool="we\\"ird\\\\pool"} 0.23\n');
    expect(text).toContain('leasegate_wait_seconds_count{pool="we\\"ird\\\\pool"} 3\n');
    // Cumulative buckets in seconds: 0 ms ≤ 1 ms, 30 ms ≤ 50 ms, 200 ms ≤ 250 ms.
    expect(h.buckets).toMatchObject({ "0.001": "1", "0.025": "1", "0.05": "2", "0.1": "2", "0.25": "3", "+Inf": "3" });
    const counts = Object.entries(h.buckets!)
      .sort(([a], [b]) => (a === "+Inf" ? Infinity : Number(a)) - (b === "+Inf" ? Infinity : Number(b)))
      .map(([, c]) => Number(c));
    expect(counts).toHaveLength(16);
    expect([...counts].sort((a, b) => a - b)).toEqual(counts);

    const db = families.get("leasegate_db_connections")!.metrics;
    expect(db.map((m) => [m.labels?.scope, Number(m.value)])).toEqual([
      ["role", 4],
      ["application", 2],
    ]);
    expect(value("leasegate_reconcile_drift_connections")).toBe(1);
    expect(value("leasegate_db_over_limit")).toBe(1);
    expect(value("leasegate_reconcile_timestamp_seconds")).toBe(5);
  });

  it("leaves the reconciliation series out until one has run", () => {
    const names = parsePrometheusTextFormat(formatMetrics("main", { ...sample(), reconciliation: null })).map(
      (f) => f.name,
    );
    expect(names).not.toContain("leasegate_db_connections");
    expect(names).toContain("leasegate_wait_seconds");
  });
});
