/** Fixed-bucket histograms of durations in milliseconds (the type is in `types.ts`). */
import type { Histogram } from "./types.ts";

export const WAIT_BUCKETS_MS: readonly number[] = [
  1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
];

/**
 * An empty histogram over `bounds`.
 *
 * @example
 * const h = createHistogram(); record(h, 12); percentile(h, 0.5)
 */
export function createHistogram(bounds: readonly number[] = WAIT_BUCKETS_MS): Histogram {
  return { bounds, counts: new Array<number>(bounds.length + 1).fill(0), count: 0, sum: 0, max: 0 };
}

/**
 * Adds one sample.
 *
 * @example
 * record(h, 3.5)
 */
export function record(h: Histogram, valueMs: number): void {
  const v = Math.max(valueMs, 0);
  let i = 0;
  while (i < h.bounds.length && v > h.bounds[i]!) i++;
  h.counts[i]!++;
  h.count++;
  h.sum += v;
  if (v > h.max) h.max = v;
}

/**
 * The q-quantile (0 < q ≤ 1) estimated from the buckets; 0 for an empty histogram. Never above the
 * largest sample seen.
 *
 * @example
 * percentile(h, 0.99)
 */
export function percentile(h: Histogram, q: number): number {
  if (h.count === 0) return 0;
  const rank = q * h.count;
  let seen = 0;
  for (let i = 0; i < h.counts.length; i++) {
    const c = h.counts[i]!;
    if (c === 0) continue;
    if (seen + c >= rank) {
      const lower = i === 0 ? 0 : h.bounds[i - 1]!;
      const upper = i < h.bounds.length ? h.bounds[i]! : h.max;
      const estimate = lower + ((upper - lower) * (rank - seen)) / c;
      return Math.min(estimate, h.max);
    }
    seen += c;
  }
  return h.max;
}
