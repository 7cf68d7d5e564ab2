// guardrails dashboard: renders /api/status, then live updates from /api/events (SSE).
// No framework, no build step, no network beyond this server.
"use strict";

const view = { updates: 0, doc: null };
window.guardrailsDashboard = view; // read by the browser test and handy in the console

function text(root, selector, value) {
  const el = root.querySelector(selector);
  if (el) el.textContent = value === null || value === undefined || value === "" ? "-" : String(value);
}

function cell(tr, value, field) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (field) td.dataset.field = field;
  tr.appendChild(td);
}

function renderAccount(a, killEnabled, extra) {
  const id = "acct-" + a.account.replace(/[^A-Za-z0-9_-]/g, "_");
  let sec = document.getElementById(id);
  if (!sec) {
    sec = document.getElementById("account-tpl").content.firstElementChild.cloneNode(true);
    sec.id = id;
    sec.dataset.account = a.account;
    for (const btn of sec.querySelectorAll(".actions button")) {
      btn.addEventListener("click", () => ask(sec, a.account, btn.dataset.action));
    }
    sec.querySelector(".confirm").addEventListener("submit", (ev) => { ev.preventDefault(); act(sec); });
    sec.querySelector(".confirm-cancel").addEventListener("click", () => { sec.querySelector(".confirm").hidden = true; });
    document.getElementById("accounts").appendChild(sec);
  }
  text(sec, ".name", a.account);
  const t = a.trading || {};
  const badge = sec.querySelector(".state");
  badge.textContent = t.state || "?";
  badge.dataset.state = t.state || "";
  badge.dataset.field = "trading-state";
  text(sec, ".latch", t.at_ms ? `${t.state} by ${t.by} at ${new Date(t.at_ms).toISOString()}: ${t.reason}` : "never set");
  // Each button only when an operator token is configured, and only where it changes something.
  const state = t.state || "ACTIVE";
  sec.querySelector(".actions").hidden = !killEnabled;
  sec.querySelector(".kill").hidden = !killEnabled || state === "HALTED";
  sec.querySelector(".reduce").hidden = !killEnabled || state !== "ACTIVE";
  sec.querySelector(".resume").hidden = !killEnabled || state === "ACTIVE";

  const b = a.budget;
  if (b) {
    text(sec, ".budget-used", b.used);
    text(sec, ".budget-limit", b.limit);
    text(sec, ".budget-day", b.trading_day);
    text(sec, ".budget-realized", b.realized_loss);
    text(sec, ".budget-unrealized", b.unrealized_loss);
    text(sec, ".budget-reserved", b.reserved_worst_loss);
    // Fees the ledger could not count are not in the figures above: say so, never hide it.
    text(sec, ".budget-fees-uncounted", String(b.fees_uncounted || 0));
    sec.querySelector(".fees-uncounted").hidden = !b.fees_uncounted;
    const pct = b.used_fraction === null ? 0 : Math.min(100, Number(b.used_fraction) * 100);
    text(sec, ".budget-pct", pct.toFixed(1) + " %");
    const fill = sec.querySelector(".gauge-fill");
    fill.style.width = pct + "%";
    fill.dataset.level = pct >= 90 ? "bad" : pct >= 60 ? "warn" : "ok";
    sec.querySelector(".gauge").setAttribute("aria-valuenow", pct.toFixed(1));
  }
  const l = a.lease || {};
  text(sec, ".lease-holder", l.holder);
  text(sec, ".lease-token", l.token);
  text(sec, ".lease-ttl", l.ttl_ms === null || l.ttl_ms === undefined ? null : l.ttl_ms + " ms");
  text(sec, ".lease-fence", l.fence);
  const c = a.counts || { admitted: null, denied: {} };
  text(sec, ".admitted", c.admitted);
  text(sec, ".denied", Object.entries(c.denied || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "none");

  const pbody = sec.querySelector(".positions tbody");
  pbody.replaceChildren();
  for (const p of a.positions || []) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = p.symbol;
    cell(tr, p.symbol);
    cell(tr, p.qty, "qty");
    cell(tr, p.avg_cost, "avg_cost");
    cell(tr, p.mark, "mark");
    cell(tr, p.unrealized, "unrealized");
    cell(tr, p.realized_pnl, "realized_pnl");
    pbody.appendChild(tr);
  }
  const obody = sec.querySelector(".orders tbody");
  obody.replaceChildren();
  for (const o of a.open_orders || []) {
    const tr = document.createElement("tr");
    tr.dataset.coid = o.client_order_id;
    for (const k of ["client_order_id", "symbol", "side", "qty", "price", "filled_qty", "state", "token"]) cell(tr, o[k], k);
    obody.appendChild(tr);
  }
  const fbody = sec.querySelector(".fills tbody");
  fbody.replaceChildren();
  for (const f of extra.recent_fills || []) {
    const tr = document.createElement("tr");
    cell(tr, f.ts_ms ? new Date(Number(f.ts_ms)).toISOString() : null, "time");
    for (const k of ["coid", "symbol", "side", "lots", "value"]) cell(tr, f[k], k);
    fbody.appendChild(tr);
  }
  drawPnl(sec, extra.pnl_history || []);
  const ibody = sec.querySelector(".instances tbody");
  ibody.replaceChildren();
  for (const i of a.instances || []) {
    const tr = document.createElement("tr");
    for (const k of ["id", "host", "pid", "role", "token", "version", "limits_digest"]) cell(tr, i[k], k);
    ibody.appendChild(tr);
  }
  const dl = sec.querySelector(".denials");
  dl.replaceChildren();
  for (const d of (a.recent_denials || []).slice(0, 10)) {
    const li = document.createElement("li");
    li.textContent = `${d.at_ms ? new Date(d.at_ms).toISOString() : ""} ${d.reason || ""} ${d.detail || ""}`;
    dl.appendChild(li);
  }
  const el = sec.querySelector(".errors");
  el.replaceChildren();
  for (const e of a.errors || []) {
    const li = document.createElement("li");
    li.textContent = e;
    el.appendChild(li);
  }
}

function render(doc) {
  view.doc = doc;
  view.updates += 1;
  const extras = (doc.dashboard && doc.dashboard.accounts) || {};
  for (const a of doc.accounts) renderAccount(a, doc.kill_enabled, extras[a.account] || {});
  text(document, "#updated", "updated " + new Date(doc.generated_at_ms).toISOString());
}

function setConn(state, label) {
  const el = document.getElementById("conn");
  el.dataset.state = state;
  el.textContent = label;
}

// The day's realized P&L and budget use, one SVG polyline each, scaled to the data.
function drawPnl(sec, samples) {
  const svg = sec.querySelector(".pnl");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  text(sec, ".pnl-points", samples.length ? `${samples.length} samples since ${new Date(samples[0].t).toISOString()}` : "no samples yet");
  if (samples.length < 2) return;
  const t0 = samples[0].t, t1 = samples[samples.length - 1].t || t0 + 1;
  const vals = samples.flatMap((p) => [Number(p.realized_pnl), Number(p.used), Number(p.limit), 0]);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * 600;
  const y = (v) => 135 - ((v - lo) / Math.max(1e-9, hi - lo)) * 130;
  const line = (field, colour, dash) => {
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("points", samples.map((p) => `${x(p.t).toFixed(1)},${y(Number(p[field])).toFixed(1)}`).join(" "));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", colour);
    pl.setAttribute("stroke-width", "2");
    pl.setAttribute("vector-effect", "non-scaling-stroke");
    if (dash) pl.setAttribute("stroke-dasharray", "6 4");
    pl.dataset.series = field;
    svg.appendChild(pl);
  };
  line("limit", "#d29922", true);
  line("used", "#f85149", false);
  line("realized_pnl", "#58a6ff", false);
}

// Kill / reduce-only / resume: an inline form (reason + operator token), confirmed by a
// second click; the result is read back from the server's answer.
function ask(sec, account, action) {
  const form = sec.querySelector(".confirm");
  form.dataset.account = account;
  form.dataset.action = action;
  const what = { kill: "HALT", reduce: "make REDUCE-ONLY", resume: "RESUME trading on" }[action];
  text(form, ".confirm-what", `${what} ${account}? Enter why and the operator token, then Confirm.`);
  form.querySelector(".confirm-go").textContent = `Confirm: ${what} ${account}`;
  text(form, ".confirm-result", "");
  form.hidden = false;
}

async function act(sec) {
  const form = sec.querySelector(".confirm");
  const { account, action } = form.dataset;
  const reason = form.elements.reason.value, token = form.elements.token.value;
  const path = action === "resume" ? "/api/resume" : "/api/kill";
  const result = form.querySelector(".confirm-result");
  try {
    const resp = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ account, reason, token, reduce_only: action === "reduce" }),
    });
    const body = await resp.json();
    result.dataset.ok = String(!!body.ok);
    result.dataset.written = String(!!body.written);
    // ok: written, confirmed by a running instance and on every connected replica;
    // written alone is not success (body.error says NOT CONFIRMED / NOT REPLICATED).
    result.textContent = body.ok
      ? `${account}: ${body.prev_state} → ${body.state} by ${body.by}; confirmed by ${body.confirmed_by.join(", ")}`
      : body.written ? body.error : `FAILED: ${body.error}`;
    if (body.written) { form.elements.token.value = ""; form.hidden = true; }
  } catch (e) {
    result.dataset.ok = "false";
    result.textContent = `FAILED: ${e}`;
  }
  view.lastAction = result.textContent;
}

// The connection indicator says what is true: "live" only while updates arrive; "stale"
// when none came for three refresh intervals; "down" when the stream or Redis failed.
let lastUpdate = 0;
async function start() {
  try {
    const resp = await fetch("/api/status");
    if (resp.ok) { render(await resp.json()); lastUpdate = Date.now(); setConn("live", "live"); }
    else setConn("down", `status ${resp.status}`);
  } catch (e) {
    setConn("down", "disconnected");
  }
  const es = new EventSource("/api/events");
  es.onopen = () => { if (Date.now() - lastUpdate > 5000) setConn("connecting", "connected, waiting for data…"); };
  es.addEventListener("status", (ev) => { lastUpdate = Date.now(); setConn("live", "live"); render(JSON.parse(ev.data)); });
  es.addEventListener("failure", () => setConn("down", "redis unreachable"));
  es.onerror = () => setConn("down", "reconnecting…");
  setInterval(() => {
    const el = document.getElementById("conn");
    if (el.dataset.state === "live" && Date.now() - lastUpdate > 6000) setConn("stale", `no update for ${Math.round((Date.now() - lastUpdate) / 1000)} s`);
  }, 1000);
}

start();
