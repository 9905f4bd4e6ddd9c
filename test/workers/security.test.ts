import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { handle } from "../../examples/pitches/src/app.ts";
import { depsFor } from "../../examples/pitches/src/worker.ts";

/** The operator surface is closed without the token; what it shows never hands out a usable lease. */
const TOKEN = "test-token"; // DEBUG_TOKEN in vitest.workers.config.ts
const POOL = "security";
const DATA_PATHS = ["/__coordinator/stats", "/__coordinator/metrics", "/__coordinator/anything"];
// The dashboard page is a shell a browser opens by navigation (which cannot carry a bearer
// header): it holds no data and every call it makes sends the token. It exists only with a token set.
const DASHBOARD_PATHS = ["/__coordinator/", "/__coordinator"];
const OPERATOR_PATHS = [...DATA_PATHS, ...DASHBOARD_PATHS];

async function call(path: string, headers: Record<string, string> = {}, debugToken: string | null = TOKEN) {
  const ctx = createExecutionContext();
  const response = await handle(
    new Request(`http://example.test${path}`, { headers }),
    depsFor({ ...env, LEASE_POOL: POOL, DEBUG_TOKEN: debugToken ?? undefined }, ctx),
  );
  await waitOnExecutionContext(ctx);
  return { status: response.status, auth: response.headers.get("www-authenticate"), text: await response.text() };
}

describe("operator endpoints", () => {
  it.each(DATA_PATHS)("%s is closed without the right bearer token", async (path) => {
    const wrong: Array<Record<string, string>> = [
      {},
      { authorization: "" },
      { authorization: "Bearer " },
      { authorization: "bearer " },
      { authorization: `bearer${TOKEN}` },
      { authorization: `Basic ${btoa(`x:${TOKEN}`)}` },
      { authorization: TOKEN },
      { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Bearer ${TOKEN.toUpperCase()}` },
      { authorization: `Bearer  ${TOKEN}` },
    ];
    for (const headers of wrong) {
      const r = await call(path, headers);
      expect(r.status, JSON.stringify(headers)).toBe(401);
      expect(JSON.parse(r.text)).toMatchObject({ error: { code: "UNAUTHORIZED" } });
      expect(r.auth).toBe('Bearer realm="leasegate"');
      expect(r.text).not.toContain(TOKEN);
    }
  });

  it.each(DATA_PATHS)("%s takes the bearer scheme in any case (RFC 7235), the token only exactly", async (path) => {
    for (const scheme of ["Bearer", "bearer", "BEARER", "bEaReR"]) {
      const r = await call(path, { authorization: `${scheme} ${TOKEN}` });
      // 200, or 404 for a path that is no endpoint: past the guard either way.
      expect(r.status, scheme).toBe(path.endsWith("/anything") ? 404 : 200);
    }
    expect((await call(path, { authorization: `bearer ${TOKEN.toUpperCase()}` })).status).toBe(401);
  });

  it.each(OPERATOR_PATHS)(
    "%s is off (404) when no token is configured, whatever the caller sends, and says how to turn it on",
    async (path) => {
      for (const token of [null, ""]) {
        const attempts: Array<Record<string, string>> = [
          {},
          { authorization: "Bearer " },
          { authorization: `Bearer ${TOKEN}` },
          { authorization: "Bearer undefined" },
        ];
        for (const headers of attempts) {
          const r = await call(path, headers, token);
          expect(r.status).toBe(404);
          expect(JSON.parse(r.text)).toEqual({
            error: { code: "NOT_FOUND", message: "Operator endpoints are off until DEBUG_TOKEN is set" },
          });
        }
      }
    },
  );

  it.each(DASHBOARD_PATHS)("%s without a token is the page shell only: no pool data in it", async (path) => {
    const stub = env.COORDINATOR_DO.getByName(POOL);
    const r = await stub.acquire({ holder: "holder-visible-only-with-token" });
    if (!r.ok) throw new Error(r.code);
    const page = await call(path);
    expect(page.status).toBe(200);
    expect(page.text).toMatch(/<html/i);
    expect(page.text).not.toContain("holder-visible-only-with-token");
    expect(page.text).not.toContain(r.lease.id.slice(0, 8));
    expect(page.text).not.toContain(TOKEN);
    expect(await stub.release({ leaseId: r.lease.id, fence: r.lease.fence })).toEqual({ ok: true, released: true });
  });

  it("with the token, stats show id prefixes only: nothing in them releases or renews a lease", async () => {
    const stub = env.COORDINATOR_DO.getByName(POOL);
    const r = await stub.acquire({ holder: "secret-holder" });
    if (!r.ok) throw new Error(r.code);
    const ok = await call("/__coordinator/stats", { authorization: `Bearer ${TOKEN}` });
    expect(ok.status).toBe(200);
    expect(ok.text).toContain(r.lease.id.slice(0, 8));
    expect(ok.text).not.toContain(r.lease.id);
    expect(ok.text).not.toContain(TOKEN);
    // The prefix is not a lease id: it frees nothing.
    expect(await stub.release({ leaseId: r.lease.id.slice(0, 8), fence: r.lease.fence })).toMatchObject({
      ok: false,
      code: "LEASE_NOT_FOUND",
    });
    expect(await stub.release({ leaseId: r.lease.id, fence: r.lease.fence })).toEqual({ ok: true, released: true });
  });
});

describe("lease ids", () => {
  it("are random v4 UUIDs: unique and unrelated to the fence or to each other", async () => {
    const stub = env.COORDINATOR_DO.getByName(`${POOL}-ids`);
    const ids = new Set<string>();
    for (let i = 0; i < 300; i++) {
      const r = await stub.acquire({ holder: "ids" });
      if (!r.ok) throw new Error(r.code);
      expect(r.lease.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      ids.add(r.lease.id);
      await stub.release({ leaseId: r.lease.id, fence: r.lease.fence });
    }
    expect(ids.size).toBe(300);
    // No shared prefix beyond chance: the first 8 hex digits are all distinct too.
    expect(new Set([...ids].map((id) => id.slice(0, 8))).size).toBe(300);
  });
});
