export {};
/**
 * A closed-loop HTTP load generator that keeps each response's status, latency and Retry-After
 * (wrk reports only totals). Clients back off as told by Retry-After (capped at 1 s), as
 * well-behaved callers do; the rest keep the server past capacity. usage: node bench/load.ts URL CLIENTS SECONDS
 * Prints one JSON object: counts and latency percentiles for 2xx and per 503 error code, as the
 * client saw them and as the Worker did (its Server-Timing header).
 */
const [url, clientsArg, secondsArg] = process.argv.slice(2);
if (!url) throw new Error("usage: node bench/load.ts URL CLIENTS SECONDS");
const clients = Number(clientsArg ?? 200);
const end = Date.now() + Number(secondsArg ?? 8) * 1000;

interface Sample {
  status: number;
  ms: number;
  serverMs: number;
  leaseMs: number;
  dbMs: number;
  code: string;
  /** A shed answered in the Worker's isolate without a coordinator call (`LEASE_LOCAL_SHED`). */
  local: boolean;
  retryAfter: boolean;
}
const samples: Sample[] = [];
let failures = 0;

async function client(): Promise<void> {
  while (Date.now() < end) {
    const t0 = performance.now();
    try {
      const r = await fetch(url!, { signal: AbortSignal.timeout(15_000) });
      const body = await r.text();
      const ms = performance.now() - t0;
      let code = "";
      let local = false;
      if (r.status !== 200) {
        const error = (JSON.parse(body) as { error?: { code?: string; message?: string } }).error;
        code = error?.code ?? String(r.status);
        local = error?.message?.startsWith("Shed in this isolate") === true;
      }
      // The Worker's own time (Server-Timing: app, and its lease wait and query), without the dev proxy's queue.
      const timing = r.headers.get("server-timing") ?? "";
      const part = (name: string) => Number(new RegExp(`${name};dur=([\\d.]+)`).exec(timing)?.[1] ?? NaN);
      samples.push({
        status: r.status,
        ms,
        serverMs: part("app"),
        leaseMs: part("lease"),
        dbMs: part("db"),
        code,
        local,
        retryAfter: r.headers.has("retry-after"),
      });
      const retryAfterS = Number(r.headers.get("retry-after") ?? 0);
      if (r.status === 503 && retryAfterS > 0)
        await new Promise((resolve) => setTimeout(resolve, Math.min(1, retryAfterS) * 1000));
    } catch {
      failures++;
    }
  }
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
await Promise.all(Array.from({ length: clients }, client));
const ok = samples.filter((s) => s.status === 200).map((s) => s.ms);
const okServer = samples.filter((s) => s.status === 200).map((s) => s.serverMs);
const byCode = (c: string) => samples.filter((s) => s.code === c);
const shed = byCode("QUEUE_FULL");
const timeouts = byCode("ACQUIRE_TIMEOUT");
console.log(
  JSON.stringify({
    ok: ok.length,
    okP50: pct(ok, 50),
    okP99: pct(ok, 99),
    okServerP50: pct(okServer, 50),
    okServerP99: pct(okServer, 99),
    okLeaseP99: pct(
      samples.filter((s) => s.status === 200).map((s) => s.leaseMs),
      99,
    ),
    okDbP50: pct(
      samples.filter((s) => s.status === 200).map((s) => s.dbMs),
      50,
    ),
    okDbP99: pct(
      samples.filter((s) => s.status === 200).map((s) => s.dbMs),
      99,
    ),
    shed: shed.length,
    shedLocal: shed.filter((s) => s.local).length,
    shedP50: pct(
      shed.map((s) => s.ms),
      50,
    ),
    shedP99: pct(
      shed.map((s) => s.ms),
      99,
    ),
    shedServerP50: pct(
      shed.map((s) => s.serverMs),
      50,
    ),
    shedServerP99: pct(
      shed.map((s) => s.serverMs),
      99,
    ),
    timeoutServerP50: pct(
      timeouts.map((s) => s.serverMs),
      50,
    ),
    timeouts: timeouts.length,
    timeoutsLocal: timeouts.filter((s) => s.local).length,
    // Every refused caller (QUEUE_FULL and ACQUIRE_TIMEOUT, in the isolate or at the coordinator):
    // how long its answer took inside the Worker.
    refusedServerP50: pct(
      [...shed, ...timeouts].map((s) => s.serverMs),
      50,
    ),
    refusedLocal: [...shed, ...timeouts].filter((s) => s.local).length,
    retryAfter: samples.filter((s) => s.status === 503 && s.retryAfter).length,
    other: Object.fromEntries(
      [
        ...new Set(
          samples
            .filter((s) => s.status !== 200 && s.code !== "QUEUE_FULL" && s.code !== "ACQUIRE_TIMEOUT")
            .map((s) => s.code),
        ),
      ].map((c) => [c, byCode(c).length]),
    ),
    failures,
  }),
);
