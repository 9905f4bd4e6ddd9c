import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { BOUNDS, ErrorCodes, MAX_BATCH, type LeaseGrant } from "../../src/core/index.ts";
import { HttpErrorCodes } from "../../src/http/respond.ts";
import { handle } from "../../examples/pitches/src/app.ts";
import { depsFor } from "../../examples/pitches/src/worker.ts";

/**
 * Hostile input against every RPC method of the coordinator and every HTTP endpoint of the Worker:
 * generated malformed, mistyped, out-of-range, oversized and forged input must be refused with a
 * stable code, and must leave the coordinator exactly as it was (compared through stats).
 * The run counts are the figures quoted in the README's "Reliability" section.
 */
const RPC_RUNS = 1500;
const HTTP_RUNS = 1000;

const STATUS_OF: Record<string, number> = {
  INVALID_ARGUMENT: 400,
  PAYLOAD_TOO_LARGE: 413,
  METHOD_NOT_ALLOWED: 405,
  NOT_FOUND: 404,
  UNAUTHORIZED: 401,
};

let tried = 0;
afterAll(() => console.log(`[reliability] hostile inputs tried: ${tried}`));

// Values that are never a valid count of milliseconds or a fence.
const badNumber = (max: number): fc.Arbitrary<unknown> =>
  fc.oneof(
    fc.integer({ min: Number.MIN_SAFE_INTEGER, max: -1 }),
    fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1e308, -0.5, 2 ** 53, max + 1),
    fc.double({ min: 0.001, max: 1e6, noNaN: true }).filter((n) => !Number.isInteger(n)),
    max < Number.MAX_SAFE_INTEGER ? fc.integer({ min: max + 1, max: Number.MAX_SAFE_INTEGER }) : fc.constant(2 ** 60),
    fc.string({ maxLength: 12 }),
    fc.boolean(),
    fc.constant(null),
    fc.array(fc.integer(), { maxLength: 3 }),
    fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
  );
const badHolder: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.string({ minLength: 201, maxLength: 5000 }),
);
const notAnObject: fc.Arbitrary<unknown> = fc.oneof(
  fc.string(),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.integer(), { maxLength: 4 }),
);

/** Acquire options with at least one field no coordinator may accept. */
const badAcquire: fc.Arbitrary<unknown> = fc.oneof(
  notAnObject,
  fc.record({ waitMs: badNumber(BOUNDS.waitMs), holder: fc.string({ maxLength: 20 }) }),
  fc.record({ ttlMs: fc.oneof(badNumber(BOUNDS.leaseTtlMs), fc.constant(0)), waitMs: fc.integer({ min: 0, max: 10 }) }),
  fc.record({ holder: badHolder, ttlMs: fc.integer({ min: 1, max: 1000 }) }),
);

/** fast-check may build null-prototype objects, which RPC cannot send: rebuild them as plain ones. */
function plain(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === "object" && value !== null)
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

/** Never a batch: not an array, empty, or longer than MAX_BATCH. */
const badBatch: fc.Arbitrary<unknown> = fc.oneof(
  fc.oneof(
    fc.string(),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
  ),
  fc.constant([]),
  fc.integer({ min: MAX_BATCH + 1, max: MAX_BATCH + 40 }).map((n) => Array.from({ length: n }, () => ({}))),
);

type Forged = { ref: unknown; ttl?: unknown; expect: readonly string[] };

function forgedRefs(real: LeaseGrant): fc.Arbitrary<Forged> {
  return fc.oneof(
    notAnObject.map((ref) => ({ ref, expect: ["INVALID_ARGUMENT"] })),
    // Unknown ids, well-formed or not, with any valid fence.
    fc
      .record({
        leaseId: fc.oneof(fc.uuid(), fc.string({ minLength: 1, maxLength: 128 })),
        fence: fc.integer({ min: 1, max: 1e9 }),
      })
      .filter((r) => r.leaseId !== real.id)
      .map((ref) => ({ ref, expect: ["LEASE_NOT_FOUND"] })),
    // The real id with someone else's fence.
    fc
      .integer({ min: 1, max: Number.MAX_SAFE_INTEGER })
      .filter((f) => f !== real.fence)
      .map((fence) => ({ ref: { leaseId: real.id, fence }, expect: ["STALE_FENCE"] })),
    // Wrong types and ranges in either field.
    badNumber(Number.MAX_SAFE_INTEGER).map((fence) => ({
      ref: { leaseId: real.id, fence },
      expect: ["INVALID_ARGUMENT"],
    })),
    fc
      .oneof(fc.constant(""), fc.string({ minLength: 129, maxLength: 1000 }), fc.integer(), fc.constant(null))
      .map((leaseId) => ({ ref: { leaseId, fence: real.fence }, expect: ["INVALID_ARGUMENT"] })),
    // A good reference with a bad TTL (renew only).
    fc
      .oneof(badNumber(BOUNDS.leaseTtlMs), fc.constant(0))
      .map((ttl) => ({ ref: { leaseId: real.id, fence: real.fence }, ttl, expect: ["INVALID_ARGUMENT"] })),
  );
}

describe("hostile input", () => {
  it(`every RPC method refuses ${RPC_RUNS} generated bad calls with a stable code and no state change`, {
    timeout: 60_000,
  }, async () => {
    const stub = env.COORDINATOR_DO.getByName("hostile-rpc");
    const a = await stub.acquire({ holder: "a" });
    const b = await stub.acquire({ holder: "b" });
    if (!a.ok || !b.ok) throw new Error("setup");
    // A frozen clock makes the whole stats snapshot comparable, expiry times included.
    const realNow = Date.now;
    const frozen = realNow();
    Date.now = () => frozen;
    try {
      const before = await stub.stats();
      const call = fc.oneof(
        badAcquire.map((options) => ({
          method: "acquire" as const,
          options,
          expect: ["INVALID_ARGUMENT"] as readonly string[],
        })),
        forgedRefs(a.lease)
          .filter((f) => f.ttl === undefined)
          .map((f) => ({ method: "release" as const, ...f })),
        forgedRefs(b.lease).map((f) => ({ method: "renew" as const, ...f })),
        // Batches: a malformed batch fails whole; in a well-formed one every bad entry fails alone.
        badBatch.map((batch) => ({
          method: "acquireMany" as const,
          batch,
          entries: [] as readonly string[][],
          expect: ["INVALID_ARGUMENT"] as readonly string[],
        })),
        badBatch.map((batch) => ({
          method: "releaseMany" as const,
          batch,
          entries: [] as readonly string[][],
          expect: ["INVALID_ARGUMENT"] as readonly string[],
        })),
        fc.array(badAcquire, { minLength: 1, maxLength: 4 }).map((batch) => ({
          method: "acquireMany" as const,
          batch,
          entries: batch.map(() => ["INVALID_ARGUMENT"] as readonly string[]),
          expect: [] as readonly string[],
        })),
        fc
          .array(
            forgedRefs(a.lease).filter((f) => f.ttl === undefined),
            { minLength: 1, maxLength: 4 },
          )
          .map((fs) => ({
            method: "releaseMany" as const,
            batch: fs.map((f) => f.ref),
            entries: fs.map((f) => f.expect),
            expect: [] as readonly string[],
          })),
      );
      await fc.assert(
        fc.asyncProperty(call, async (c) => {
          tried++;
          if (c.method === "acquireMany" || c.method === "releaseMany") {
            const r =
              c.method === "acquireMany"
                ? await stub.acquireMany(plain(c.batch) as never)
                : await stub.releaseMany(plain(c.batch) as never);
            if (c.entries.length === 0) expect(r).toMatchObject({ ok: false, code: c.expect[0] });
            else if (!r.ok) expect.unreachable(`a well-formed batch failed whole: ${r.code}`);
            else {
              expect(r.results).toHaveLength(c.entries.length);
              r.results.forEach((x, i) => {
                expect(x).toMatchObject({ ok: false });
                if (x && !x.ok) expect(c.entries[i]).toContain(x.code);
              });
            }
            expect(await stub.stats()).toEqual(before);
            return;
          }
          const r =
            c.method === "acquire"
              ? await stub.acquire(plain(c.options) as never)
              : c.method === "release"
                ? await stub.release(plain(c.ref) as never)
                : await stub.renew(plain(c.ref) as never, plain(c.ttl) as never);
          expect(r.ok).toBe(false);
          if (!r.ok) {
            expect(c.expect).toContain(r.code);
            expect(typeof r.message).toBe("string");
          }
          expect(await stub.stats()).toEqual(before);
        }),
        // No shrinking: a wrongly accepted acquire holds slots, and shrinking would wait on them.
        { numRuns: RPC_RUNS, endOnFailure: true },
      );
    } finally {
      Date.now = realNow;
    }
  });

  it(`every HTTP endpoint answers ${HTTP_RUNS} generated hostile requests with 2xx/4xx and a stable code`, {
    timeout: 60_000,
  }, async () => {
    const pool = "hostile-http";
    const stub = env.COORDINATOR_DO.getByName(pool);
    const path = fc.oneof(
      fc.constantFrom(
        "/api/pitches",
        "/api/pitches/trending",
        "/api/pitches/public",
        "/health",
        "/__coordinator/stats",
        "/__coordinator",
        "/",
      ),
      fc.string({ maxLength: 30 }).map((s) => `/api/pitches/${encodeURIComponent(s)}`),
      fc
        .constantFrom(
          "-1",
          "0",
          "1e3",
          "0x10",
          "99999999999999999999",
          "1.5",
          "NaN",
          "%00",
          "..",
          "1;DROP TABLE pitches",
        )
        .map((s) => `/api/pitches/${s}`),
      fc.string({ maxLength: 30 }).map((s) => `/__coordinator/${encodeURIComponent(s)}`),
      fc.webPath(),
    );
    const queryValue = fc.oneof(
      fc.constantFrom("-1", "0", "NaN", "1e9", "0x10", "", "9".repeat(40), "1.5", " 5", "5 ", "Infinity"),
      fc.integer().map(String),
      fc.string({ maxLength: 20 }),
    );
    const query = fc.record({ limit: fc.option(queryValue), offset: fc.option(queryValue) }, { requiredKeys: [] });
    const jsonBody = fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc
        .record(
          {
            title: fc.oneof(
              fc.string(),
              fc.integer(),
              fc.constant(null),
              fc.string({ minLength: 201, maxLength: 400 }),
            ),
            logline: fc.oneof(fc.string(), fc.boolean()),
            genre: fc.oneof(fc.string({ maxLength: 10 }), fc.integer()),
            author: fc.oneof(fc.string(), fc.array(fc.string())),
            isPublic: fc.oneof(fc.boolean(), fc.string(), fc.integer()),
          },
          { requiredKeys: [] },
        )
        .map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 200 }), // mostly not JSON at all
      fc.constantFrom("{", "[]", "null", '{"title":', "\u0000", '{"__proto__":{"x":1}}'),
      fc.integer({ min: 16 * 1024 + 1, max: 64 * 1024 }).map((n) => `"${"x".repeat(n)}"`),
    );
    const request = fc.record({
      method: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"),
      path,
      query,
      body: jsonBody,
      authorization: fc.option(
        fc.oneof(
          fc.string({ maxLength: 40 }).map((s) => `Bearer ${s}`),
          fc.string({ maxLength: 40 }),
          fc.constantFrom("Bearer test-token ", "Bearer test-token"),
        ),
        { nil: undefined },
      ),
    });

    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        tried++;
        const url = new URL(`http://example.test${r.path.startsWith("/") ? r.path : `/${r.path}`}`);
        for (const [k, v] of Object.entries(r.query)) if (v !== null && v !== undefined) url.searchParams.set(k, v);
        const headers: Record<string, string> = { "content-type": "application/json" };
        if (r.authorization !== undefined) headers.authorization = r.authorization;
        const hasBody = r.method !== "GET";
        const request = new Request(url, { method: r.method, headers, body: hasBody ? r.body : undefined });
        const before = (await stub.stats()).counters;
        const ctx = createExecutionContext();
        const response = await handle(request, depsFor({ ...env, LEASE_POOL: pool }, ctx));
        await waitOnExecutionContext(ctx);
        // Never a 5xx for bad input: the database is up and the pool is idle.
        expect(response.status, `${r.method} ${url.pathname}${url.search}`).toBeLessThan(500);
        if ((response.headers.get("content-type") ?? "").startsWith("text/html")) {
          // The dashboard shell (see security.test.ts): a page with no pool data, no lease taken.
          expect(url.pathname).toMatch(/^\/__coordinator\/?$/);
          expect((await stub.stats()).counters.granted).toBe(before.granted);
          return;
        }
        const body = (await response.json()) as { error?: { code: string; message: string } };
        if (response.status >= 400) {
          const code = body.error?.code ?? "missing";
          expect([...ErrorCodes, ...HttpErrorCodes] as readonly string[]).toContain(code);
          expect(STATUS_OF[code]).toBe(response.status);
          expect(typeof body.error?.message).toBe("string");
          if (code !== "NOT_FOUND") {
            // Refused before any slot was taken.
            expect((await stub.stats()).counters.granted).toBe(before.granted);
          }
        }
        const after = await stub.stats();
        // Whatever was granted was given back; nothing held, nothing queued.
        expect(after).toMatchObject({ held: 0, waiting: 0 });
        expect(after.counters.granted - before.granted).toBe(after.counters.released - before.released);
      }),
      { numRuns: HTTP_RUNS },
    );
    const s = await stub.stats();
    expect(s.counters).toMatchObject({ expired: 0, timedOut: 0, rejected: 0 });
  });
});
