import { env, exports } from "cloudflare:workers";
import { expect, it } from "vitest";

it("queries Postgres under a lease from the coordinator Worker", async () => {
  const response = await exports.default.fetch(new Request("http://example.test/"));
  expect(response.status).toBe(200);
  expect(await response.json()).toEqual({ answer: 42 });
});

it("serves more concurrent requests than the coordinator's limit of 2, all under leases", async () => {
  const responses = await Promise.all(
    Array.from({ length: 6 }, () => exports.default.fetch(new Request("http://example.test/"))),
  );
  expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
  const stats = await env.COORDINATOR_DO.getByName("main").stats();
  expect(stats.limit).toBe(2);
  expect(stats.counters.granted).toBeGreaterThanOrEqual(7);
});
