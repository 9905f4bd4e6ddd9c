import type { OperatorStats } from "../core/index.ts";

/** The content type of the Prometheus text exposition format, version 0.0.4. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Kind = "counter" | "gauge" | "histogram";

/** Label values escape `\`, `"` and newlines, as the text format requires. */
function label(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Numbers in the text format: integers as such, `+Inf` spelled out. */
function num(value: number): string {
  if (value === Infinity) return "+Inf";
  return Number.isFinite(value) ? String(value) : "NaN";
}

/**
 * One pool's stats in the Prometheus text exposition format. Every series carries a `pool` label;
 * durations are in seconds (`_seconds`), counters end in `_total`, and the wait-time histogram
 * has cumulative `_bucket{le}` series plus `_sum` and `_count`. Pure: no clock, no I/O.
 *
 * @example
 * new Response(formatMetrics("main", await stub.operatorStats()), { headers: { "content-type": METRICS_CONTENT_TYPE } })
 */
export function formatMetrics(pool: string, s: OperatorStats): string {
  const lines: string[] = [];
  const p = `pool="${label(pool)}"`;
  const family = (name: string, kind: Kind, help: string, samples: Array<[suffixAndLabels: string, value: number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${kind}`);
    for (const [rest, value] of samples) lines.push(`${name}${rest} ${num(value)}`);
  };
  const one = (name: string, kind: Kind, help: string, value: number) => family(name, kind, help, [[`{${p}}`, value]]);

  one("leasegate_limit_leases", "gauge", "Slots in the pool: leases that may be held at once.", s.limit);
  one("leasegate_held_leases", "gauge", "Leases held now.", s.held);
  one("leasegate_waiting_requests", "gauge", "Callers queued for a slot now.", s.waiting);
  one(
    "leasegate_oldest_wait_seconds",
    "gauge",
    "Age of the oldest queued caller (0 when none waits).",
    s.maxWaitMs / 1000,
  );
  one(
    "leasegate_max_queue_requests",
    "gauge",
    "Queue length beyond which callers are shed with QUEUE_FULL.",
    s.maxQueue,
  );
  one("leasegate_paused", "gauge", "1 while an operator has paused granting (drain), else 0.", s.paused ? 1 : 0);
  // Older coordinators answer without `queue`: they serve FIFO.
  const queue = s.queue ?? { mode: "fifo", lifo: false };
  family("leasegate_queue_mode", "gauge", "The queue mode configured (LEASE_QUEUE): 1 for the mode in force.", [
    [`{${p},mode="${label(queue.mode)}"}`, 1],
  ]);
  one(
    "leasegate_queue_lifo",
    "gauge",
    "1 while a standing queue has the newest waiters served first (LEASE_QUEUE=adaptive), else 0.",
    queue.lifo ? 1 : 0,
  );
  one(
    "leasegate_recovery_seconds",
    "gauge",
    "Time left in the recovery window after a restart (nothing is granted while leases from before may be alive), else 0.",
    (s.recovery?.endsInMs ?? 0) / 1000,
  );
  one(
    "leasegate_recovered_leases",
    "gauge",
    "Leases re-registered by their holders' verified renewals in the current recovery window.",
    s.recovery?.recovered ?? 0,
  );

  one("leasegate_leases_granted_total", "counter", "Leases granted.", s.counters.granted);
  one(
    "leasegate_leases_released_total",
    "counter",
    "Leases released by their holders (or by an operator).",
    s.counters.released,
  );
  one(
    "leasegate_leases_expired_total",
    "counter",
    "Leases reaped because their holder neither released nor renewed them.",
    s.counters.expired,
  );
  one("leasegate_acquire_timeouts_total", "counter", "Acquires that failed with ACQUIRE_TIMEOUT.", s.counters.timedOut);
  one("leasegate_acquire_rejected_total", "counter", "Acquires shed at once with QUEUE_FULL.", s.counters.rejected);
  one("leasegate_acquire_cancelled_total", "counter", "Queued acquires whose caller gave up.", s.counters.cancelled);
  const pr = s.prediction;
  if (pr) {
    one(
      "leasegate_acquire_hopeless_total",
      "counter",
      "Acquires answered ACQUIRE_TIMEOUT at once, their predicted wait past their deadline (also counted as timeouts).",
      pr.shed,
    );
    one(
      "leasegate_wait_forecasts_total",
      "counter",
      "Waits granted from the queue measured against their forecast.",
      pr.waits,
    );
    family("leasegate_wait_forecast_mean_seconds", "gauge", "Mean forecast and actual wait of the measured waits.", [
      [`{${p},of="forecast"}`, pr.meanPredictedMs / 1000],
      [`{${p},of="actual"}`, pr.meanActualMs / 1000],
    ]);
    one(
      "leasegate_wait_forecast_error_seconds",
      "gauge",
      "Mean absolute error of the wait forecast (actual − forecast) over the measured waits.",
      pr.meanAbsErrorMs / 1000,
    );
    one(
      "leasegate_wait_forecast_early_ratio",
      "gauge",
      "Recent share of measured waits served in under their forecast ÷ the shed margin: the share a shed would get wrong.",
      pr.earlyShare,
    );
    one(
      "leasegate_shedding",
      "gauge",
      "1 while hopeless waits are told at once (forecasts trusted), else 0.",
      pr.shedding ? 1 : 0,
    );
  }

  // Prometheus buckets are cumulative; ours count each bucket alone, the last one being +Inf.
  const { bounds, counts } = s.waitHistogram;
  const buckets: Array<[string, number]> = [];
  let cumulative = 0;
  for (let i = 0; i < counts.length; i++) {
    cumulative += counts[i]!;
    const le = i < bounds.length ? num(bounds[i]! / 1000) : "+Inf";
    buckets.push([`_bucket{${p},le="${le}"}`, cumulative]);
  }
  buckets.push([`_sum{${p}}`, s.waitTimeMs.sum / 1000], [`_count{${p}}`, s.waitTimeMs.count]);
  family("leasegate_wait_seconds", "histogram", "Time from acquire to grant or timeout.", buckets);

  if (s.limitSource) {
    family(
      "leasegate_limit_source",
      "gauge",
      "1 for where the limit comes from now: LEASE_LIMIT (configured), the database (learned) or an operator.",
      (["configured", "learned", "operator"] as const).map((source) => [
        `{${p},source="${source}"}`,
        s.limitSource === source ? 1 : 0,
      ]),
    );
  }
  const l = s.learned;
  if (l) {
    const t = l.terms;
    one("leasegate_learned_limit_leases", "gauge", "The limit the last learning found (LEASE_LIMIT=auto).", l.limit);
    family(
      "leasegate_learned_room_connections",
      "gauge",
      "Room the database had for the application at the last learning, by scope (before the headroom).",
      [
        [`{${p},scope="server"}`, l.server],
        ...(l.role === null ? [] : [[`{${p},scope="role"}`, l.role] as [string, number]]),
        ...(l.database === null ? [] : [[`{${p},scope="database"}`, l.database] as [string, number]]),
      ],
    );
    family(
      "leasegate_learned_others_connections",
      "gauge",
      "Client connections that were not the application's at the last learning, by scope.",
      [
        [`{${p},scope="server"}`, t.othersOnServer],
        [`{${p},scope="role"}`, t.othersOfRole],
        [`{${p},scope="database"}`, t.othersInDatabase],
      ],
    );
    one("leasegate_learned_max_connections", "gauge", "max_connections at the last learning.", t.maxConnections);
    one(
      "leasegate_learned_reserved_connections",
      "gauge",
      "superuser_reserved_connections plus reserved_connections at the last learning.",
      t.superuserReserved + (t.reserved ?? 0),
    );
    one(
      "leasegate_learned_headroom_connections",
      "gauge",
      "LEASE_HEADROOM: slots kept free below the room.",
      t.headroom,
    );
    one(
      "leasegate_learn_timestamp_seconds",
      "gauge",
      "When the last learning read the database (Unix time).",
      l.learnedAt / 1000,
    );
    if (s.learnedAgeMs != null)
      one(
        "leasegate_learned_age_seconds",
        "gauge",
        "How old the learned limit in force is: alert when it grows past a few LEASE_LEARN_INTERVAL_MS.",
        s.learnedAgeMs / 1000,
      );
    one(
      "leasegate_learned_pools",
      "gauge",
      "Pools with LEASE_LIMIT=auto on this database at the last learning (this one included): the room is split among them.",
      t.pools ?? 1,
    );
  }
  if (s.learnFailure)
    family(
      "leasegate_learn_failure_timestamp_seconds",
      "gauge",
      "When the last learning failed, since the last one that worked (Unix time), by the failure's code.",
      [[`{${p},code="${label(s.learnFailure.code)}"}`, s.learnFailure.at / 1000]],
    );
  const r = s.reconciliation;
  if (r) {
    const db = `${p},role="${label(r.role)}"`;
    family(
      "leasegate_db_connections",
      "gauge",
      "Client connections of the role seen in pg_stat_activity at the last reconciliation.",
      [
        [`{${db},scope="role"}`, r.roleConnections],
        [`{${db},scope="application"}`, r.appConnections],
      ],
    );
    one(
      "leasegate_reconcile_drift_connections",
      "gauge",
      "Application connections minus held leases at the last reconciliation.",
      r.drift,
    );
    one(
      "leasegate_db_over_limit",
      "gauge",
      "1 when the role held more connections than the limit at the last reconciliation.",
      r.overLimit ? 1 : 0,
    );
    if (r.terminated !== undefined)
      one(
        "leasegate_reconcile_terminated_backends",
        "gauge",
        "LEASE_ENFORCE=terminate: backends of leases no longer held that the last reconciliation terminated.",
        r.terminated,
      );
    one(
      "leasegate_reconcile_timestamp_seconds",
      "gauge",
      "When the last reconciliation read pg_stat_activity (Unix time).",
      r.checkedAt / 1000,
    );
  }
  return `${lines.join("\n")}\n`;
}
