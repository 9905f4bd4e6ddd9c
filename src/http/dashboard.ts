/**
 * The operator dashboard: one self-contained page (inline CSS and script, no CDN, no images), so
 * it works where nothing outside is reachable. It polls `/__coordinator/stats` with the bearer
 * token and draws occupancy over time as inline SVG; buttons drive the live controls.
 *
 * The token comes from the URL fragment (`/__coordinator/#token=…`, never sent to the server and
 * wiped from the address bar at once), else from localStorage, else from a form on the page.
 * `#interval=500` sets the poll period in ms (default 1000).
 *
 * Untrusted text (lease holders come from request paths) is only ever set as `textContent`.
 *
 * @example
 * open http://127.0.0.1:8787/__coordinator/#token=$DEBUG_TOKEN
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leasegate · coordinator</title>
<style>
  :root { --bg:#0f1419; --panel:#171d24; --line:#2a323c; --text:#d8dee6; --dim:#8a96a3;
          --held:#4fb3ff; --limit:#ff6b6b; --wait:#ffc24b; --ok:#3ecf8e; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; gap:16px; align-items:baseline; padding:14px 20px; border-bottom:1px solid var(--line); }
  h1 { font-size:18px; margin:0; } h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 8px; }
  main { display:grid; grid-template-columns: 2fr 1fr; gap:14px; padding:14px 20px; }
  section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  .wide { grid-column: 1 / -1; }
  .big { font-size:28px; font-variant-numeric: tabular-nums; }
  .badge { padding:2px 8px; border-radius:10px; font-size:12px; background:var(--line); }
  .badge.bad { background:#5c2626; color:#ffb3b3; } .badge.good { background:#1d4634; color:#a6f0c9; }
  .grid { display:grid; grid-template-columns: repeat(3, 1fr); gap:6px 12px; font-variant-numeric: tabular-nums; }
  .grid div span { display:block; color:var(--dim); font-size:12px; }
  table { width:100%; border-collapse:collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); }
  th { color:var(--dim); font-weight:normal; font-size:12px; }
  td.holder { max-width:420px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
  button, input { font:inherit; color:var(--text); background:#222b35; border:1px solid var(--line); border-radius:5px; padding:4px 10px; }
  button:hover { border-color:var(--held); cursor:pointer; } input { width:80px; }
  .row { display:flex; gap:8px; align-items:center; flex-wrap:wrap; margin-bottom:8px; }
  svg { width:100%; height:220px; display:block; }
  .legend span { margin-right:14px; font-size:12px; } .legend i { display:inline-block; width:18px; height:3px; vertical-align:middle; margin-right:4px; }
  #error { color:#ffb3b3; } #login { display:none; }
</style>
</head>
<body>
<header>
  <h1>leasegate</h1>
  <span>pool <b id="pool">…</b></span>
  <span id="state" class="badge">connecting</span>
  <span id="recon" class="badge">not reconciled</span>
  <span id="queueMode" class="badge" data-lifo="false">queue fifo</span>
  <span id="prediction" class="badge" title="Callers told at once that their predicted wait exceeded their deadline; for waits granted from the queue, the mean error of that prediction"></span>
  <span id="error"></span>
</header>
<form id="login" class="row" style="padding:14px 20px">
  <label>Bearer token (DEBUG_TOKEN) <input id="token" type="password" style="width:260px" autocomplete="off"></label>
  <button>Connect</button>
</form>
<main>
  <section>
    <h2>Occupancy</h2>
    <div class="row"><span class="big" id="occupancy">–</span><span id="waitingNow" class="big" style="color:var(--wait)"></span></div>
    <svg id="chart" viewBox="0 0 600 220" preserveAspectRatio="none" role="img" aria-label="held, limit and waiting over time" data-samples="0" data-max-held="0" data-last-held="0"></svg>
    <div class="legend"><span><i style="background:var(--held)"></i>held</span><span><i style="background:var(--limit)"></i>limit</span><span><i style="background:var(--wait)"></i>waiting</span><span id="span" style="color:var(--dim)"></span></div>
  </section>
  <section>
    <h2>Counters</h2>
    <div class="grid" id="counters"></div>
    <h2 style="margin-top:14px">Wait time (ms)</h2>
    <div class="grid" id="waits"></div>
    <h2 style="margin-top:14px">Database (pg_stat_activity)</h2>
    <div class="grid" id="db"></div>
    <h2 style="margin-top:14px">Limit</h2>
    <div id="limitWhy" data-source=""></div>
    <div class="grid" id="limitTerms"></div>
  </section>
  <section class="wide">
    <h2>Controls</h2>
    <div class="row">
      <button id="pause">Pause granting</button>
      <button id="resume">Resume</button>
      <label>limit <input id="limit" type="number" min="1"></label><button id="setLimit">Set limit</button>
      <button id="resetLimit">Default limit</button>
      <button id="reconcile">Reconcile now</button>
      <button id="learn">Learn limit now</button>
      <span id="ack" style="color:var(--dim)"></span>
    </div>
  </section>
  <section class="wide" id="sharesBox" hidden>
    <h2>Shards <span id="layout" style="color:var(--dim)"></span></h2>
    <table><thead><tr><th>shard</th><th>share</th><th>demand</th><th>held</th><th>reserve</th><th>reported</th></tr></thead><tbody id="shares"></tbody></table>
  </section>
  <section class="wide">
    <h2>Held leases</h2>
    <table><thead><tr><th>id</th><th>holder</th><th>fence</th><th>age</th><th>expires in</th><th></th></tr></thead><tbody id="leases"></tbody></table>
  </section>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    localStorage.setItem("leasegate-token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + location.search + (params.toString() ? "#" + params : ""));
  }
  const interval = Math.max(100, Number(params.get("interval")) || 1000);
  const base = location.pathname.replace(/\\/+$/, "");
  let token = localStorage.getItem("leasegate-token") || "";
  const history_ = [];
  const KEEP = 120;

  function ask(message) {
    $("login").style.display = "flex";
    $("error").textContent = message;
  }
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    localStorage.setItem("leasegate-token", token);
    $("login").style.display = "none";
    $("error").textContent = "";
    poll();
  });

  async function call(path, method = "GET", body) {
    const r = await fetch(base + path, {
      method,
      headers: { authorization: "Bearer " + token, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
    const data = await r.json().catch(() => ({}));
    if (r.status === 401) { ask("token refused"); throw new Error("unauthorized"); }
    if (!r.ok) throw new Error((data.error && data.error.code) || ("HTTP " + r.status));
    return data;
  }

  function cells(el, pairs) {
    el.replaceChildren(...pairs.map(([k, v]) => {
      const d = document.createElement("div");
      const s = document.createElement("span");
      s.textContent = k;
      d.append(s, String(v));
      return d;
    }));
  }

  // Where the limit comes from, in one sentence: an operator, LEASE_LIMIT, or the last learning.
  function why(s, source, L) {
    if (source === "operator") return "limit " + s.limit + ": set by an operator" + (L ? " (learned: " + L.limit + ")" : "");
    if (source !== "learned" || !L) return "limit " + s.limit + ": configured (LEASE_LIMIT)";
    const t = L.terms;
    const scope = { server: "server: max_connections " + t.maxConnections + " − reserved " + (t.superuserReserved + (t.reserved || 0)) + " − others " + t.othersOnServer,
      role: "role: CONNECTION LIMIT " + t.roleLimit + " − others of the role " + t.othersOfRole,
      database: "database: CONNECTION LIMIT " + t.databaseLimit + " − others in it " + t.othersInDatabase };
    const pools = L.bound === "role" ? t.poolsOfRole : t.pools;
    const split = pools > 1 ? ", split among " + pools + " pools that learn" : "";
    if (L.bound === "limitMax") return "limit " + s.limit + ": learned, capped by LEASE_LIMIT_MAX " + t.limitMax + " (room " + L.room + ")";
    return "limit " + s.limit + ": learned = room " + L.room + " (" + scope[L.bound] + split + ") − headroom " + t.headroom + (L.starved ? ", held at 1: no room left" : "");
  }

  function ms(v) { return v >= 10000 ? (v / 1000).toFixed(0) + " s" : Math.round(v) + " ms"; }

  function draw() {
    const svg = $("chart");
    const W = 600, H = 220, pad = 6;
    const top = Math.max(1, ...history_.map((p) => Math.max(p.limit, p.held, p.waiting)));
    // The samples fill the width from the first one; past KEEP samples the window scrolls.
    const n = Math.max(2, history_.length);
    const x = (i) => pad + (i * (W - 2 * pad)) / (n - 1);
    const y = (v) => H - pad - (v * (H - 2 * pad)) / (top * 1.1);
    const line = (key, color, dash) => {
      const pts = history_.map((p, i) => x(i).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ");
      return '<polyline data-series="' + key + '" fill="none" stroke="' + color + '" stroke-width="2.5"' + (dash ? ' stroke-dasharray="6 4"' : "") + ' points="' + pts + '"/>';
    };
    let grid = "";
    for (let v = 0; v <= top * 1.1; v += Math.max(1, Math.ceil(top / 4))) {
      grid += '<line x1="0" x2="' + W + '" y1="' + y(v) + '" y2="' + y(v) + '" stroke="#2a323c"/><text x="2" y="' + (y(v) - 2) + '" fill="#8a96a3" font-size="10">' + v + "</text>";
    }
    const area = history_.length ? '<polygon fill="rgba(79,179,255,.15)" points="' + x(0) + "," + y(0) + " " +
      history_.map((p, i) => x(i).toFixed(1) + "," + y(p.held).toFixed(1)).join(" ") + " " + x(history_.length - 1) + "," + y(0) + '"/>' : "";
    // The limit goes on top: a pool at its limit shows the dashed line over the held line.
    svg.innerHTML = grid + area + line("waiting", "#ffc24b") + line("held", "#4fb3ff") + line("limit", "#ff6b6b", true);
    svg.dataset.samples = String(history_.length);
    svg.dataset.maxHeld = String(Math.max(0, ...history_.map((p) => p.held)));
    svg.dataset.lastHeld = String(history_.length ? history_[history_.length - 1].held : 0);
    $("span").textContent = "last " + Math.round((history_.length * interval) / 1000) + " s";
  }

  function render(s) {
    $("pool").textContent = s.pool;
    $("occupancy").textContent = s.held + " / " + s.limit + " held";
    $("waitingNow").textContent = s.waiting ? s.waiting + " waiting" : "";
    const st = $("state");
    // After a restart nothing is granted until the leases from before are recovered (or expired).
    const recovery = s.recovery ? "RECOVERING " + (s.recovery.endsInMs / 1000).toFixed(1) + " s (" + s.recovery.recovered + " recovered)" : "";
    st.textContent = s.paused ? "PAUSED (draining)" : recovery || "granting";
    st.className = "badge " + (s.paused || recovery ? "bad" : "good");
    // The queue mode (LEASE_QUEUE) and, under a standing queue, newest-first in force.
    const q = s.queue || { mode: "fifo", lifo: false };
    $("queueMode").textContent = "queue " + q.mode + (q.lifo ? ": LIFO now (standing queue)" : q.mode === "adaptive" ? ": FIFO now" : "");
    $("queueMode").dataset.lifo = String(q.lifo);
    // Hopeless waits told at once, and how far off the predictions were (predicted vs actual).
    const pr = s.prediction;
    $("prediction").textContent = pr ? "told at once " + pr.shed + " · wait forecast ±" + pr.meanAbsErrorMs + " ms over " + pr.waits +
      (pr.shedding ? "" : " (not shedding: " + (pr.waits < 20 ? "too few waits" : "forecasts off") + ")") : "";
    if (document.activeElement !== $("limit")) $("limit").value = s.limit;
    const c = s.counters;
    cells($("counters"), [["granted", c.granted], ["released", c.released], ["expired", c.expired],
      ["timed out", c.timedOut], ["rejected", c.rejected], ["cancelled", c.cancelled]]);
    const w = s.waitTimeMs;
    cells($("waits"), [["p50", w.p50.toFixed(1)], ["p90", w.p90.toFixed(1)], ["p99", w.p99.toFixed(1)],
      ["max", w.max.toFixed(1)], ["oldest waiter", s.maxWaitMs], ["samples", w.count]]);
    const r = s.reconciliation;
    const rb = $("recon");
    if (r) {
      rb.textContent = "db: " + r.status.replace("_", " ") + " (drift " + (r.drift > 0 ? "+" : "") + r.drift + ")";
      rb.className = "badge " + (r.status === "ok" ? "good" : "bad");
      cells($("db"), [["role " + r.role, r.roleConnections], ["app " + r.applicationName, r.appConnections], ["drift", r.drift],
        ["over limit", r.overLimit ? "YES" : "no"], ["checked", new Date(r.checkedAt).toLocaleTimeString()], ["limit override", s.limitOverride ?? "none"]]);
    } else {
      cells($("db"), [["reconciliation", "not run yet"], ["limit override", s.limitOverride ?? "none"]]);
    }
    const source = s.limitSource || (s.limitOverride != null ? "operator" : "configured");
    const L = s.learned || null;
    $("limitWhy").textContent = why(s, source, L);
    $("limitWhy").dataset.source = source;
    const none = (v) => (v == null ? "none" : v);
    cells($("limitTerms"), L ? [["max_connections", L.terms.maxConnections], ["superuser reserved", L.terms.superuserReserved],
      ["reserved_connections", none(L.terms.reserved)], ["role limit", none(L.terms.roleLimit)], ["database limit", none(L.terms.databaseLimit)],
      ["others on server", L.terms.othersOnServer], ["others of role", L.terms.othersOfRole], ["others in database", L.terms.othersInDatabase],
      ["headroom", L.terms.headroom], ["LEASE_LIMIT_MAX", none(L.terms.limitMax)], ["pools that learn", L.terms.pools || 1],
      ["learned", new Date(L.learnedAt).toLocaleTimeString() + (s.learnedAgeMs != null ? " (" + ms(s.learnedAgeMs) + " ago)" : "")],
      ["last failure", s.learnFailure ? s.learnFailure.code + " at " + new Date(s.learnFailure.at).toLocaleTimeString() + ": " + s.learnFailure.message : "none"]] : []);
    // A sharded pool: the root's limit shared among its shards, each one's share and demand.
    const sh = s.shares;
    $("sharesBox").hidden = !sh;
    if (sh) {
      $("layout").textContent = "limit " + sh.limit + " over " + sh.layout.count + " shards, split by " + sh.layout.split;
      $("shares").replaceChildren(...sh.shards.map((a) => {
        const tr = document.createElement("tr");
        tr.dataset.shard = a.shard;
        for (const v of [a.shard === "root" ? "root (" + s.pool + ")" : s.pool + "#" + a.shard + (a.inLayout ? "" : " (draining)"),
          a.share, a.demand, a.held, a.reserve, a.reportedAgoMs == null ? "–" : ms(a.reportedAgoMs) + " ago"]) {
          const td = document.createElement("td");
          td.textContent = String(v);
          tr.append(td);
        }
        return tr;
      }));
    }
    const rows = s.leases.map((l) => {
      const tr = document.createElement("tr");
      for (const v of [l.idPrefix, l.holder, l.fence, ms(l.ageMs), ms(l.expiresInMs) + (l.revoked ? " (revoked)" : "")]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        if (v === l.holder) td.className = "holder";
        tr.append(td);
      }
      const td = document.createElement("td");
      const b = document.createElement("button");
      // A revoked lease stays held until its holder releases it or it expires (its statement may still run).
      b.textContent = "Revoke";
      b.disabled = Boolean(l.revoked);
      b.onclick = () => control("/release", { id: l.idPrefix }, "revoked " + l.idPrefix);
      td.append(b);
      tr.append(td);
      return tr;
    });
    $("leases").replaceChildren(...rows);
    history_.push({ held: s.held, limit: s.limit, waiting: s.waiting });
    if (history_.length > KEEP) history_.shift();
    draw();
  }

  async function control(path, body, done) {
    try {
      await call(path, "POST", body || {});
      $("ack").textContent = done + " at " + new Date().toLocaleTimeString();
      $("error").textContent = "";
    } catch (e) {
      $("error").textContent = path + ": " + e.message;
    }
  }
  $("pause").onclick = () => control("/pause", {}, "paused");
  $("resume").onclick = () => control("/resume", {}, "resumed");
  $("setLimit").onclick = () => control("/limit", { limit: Number($("limit").value) }, "limit set");
  $("resetLimit").onclick = () => control("/limit", { limit: null }, "limit back to default");
  $("reconcile").onclick = () => control("/reconcile", {}, "reconciled");
  $("learn").onclick = () => control("/learn", {}, "limit learned");

  let timer;
  async function poll() {
    clearTimeout(timer);
    if (!token) return ask("");
    try {
      render(await call("/stats"));
      $("error").textContent = "";
    } catch (e) {
      if (e.message === "unauthorized") return;
      $("error").textContent = "stats: " + e.message;
    }
    timer = setTimeout(poll, interval);
  }
  poll();
})();
</script>
</body>
</html>
`;
