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

function renderAccount(a, killEnabled) {
  const id = "acct-" + a.account.replace(/[^A-Za-z0-9_-]/g, "_");
  let sec = document.getElementById(id);
  if (!sec) {
    sec = document.getElementById("account-tpl").content.firstElementChild.cloneNode(true);
    sec.id = id;
    sec.dataset.account = a.account;
    sec.querySelector(".kill").addEventListener("click", () => kill(a.account));
    document.getElementById("accounts").appendChild(sec);
  }
  text(sec, ".name", a.account);
  const t = a.trading || {};
  const badge = sec.querySelector(".state");
  badge.textContent = t.state || "?";
  badge.dataset.state = t.state || "";
  badge.dataset.field = "trading-state";
  text(sec, ".latch", t.at_ms ? `${t.state} by ${t.by} at ${new Date(t.at_ms).toISOString()}: ${t.reason}` : "never set");
  sec.querySelector(".kill").hidden = !killEnabled;

  const b = a.budget;
  if (b) {
    text(sec, ".budget-used", b.used);
    text(sec, ".budget-limit", b.limit);
    text(sec, ".budget-day", b.trading_day);
    text(sec, ".budget-realized", b.realized_loss);
    text(sec, ".budget-unrealized", b.unrealized_loss);
    text(sec, ".budget-reserved", b.reserved_worst_loss);
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
  for (const a of doc.accounts) renderAccount(a, doc.kill_enabled);
  text(document, "#updated", "updated " + new Date(doc.generated_at_ms).toISOString());
}

function setConn(state, label) {
  const el = document.getElementById("conn");
  el.dataset.state = state;
  el.textContent = label;
}

async function kill(account) {
  const reason = prompt(`Kill ${account}: reason?`);
  if (!reason) return;
  const token = prompt("Operator token:");
  if (!token) return;
  const resp = await fetch("/api/kill", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ account, reason, token }),
  });
  const body = await resp.json();
  alert(body.ok ? `${account}: ${body.prev_state} -> ${body.state} by ${body.by}` : `kill FAILED: ${body.error}`);
}

async function start() {
  try {
    const resp = await fetch("/api/status");
    if (resp.ok) render(await resp.json());
  } catch (e) {
    setConn("down", "disconnected");
  }
  const es = new EventSource("/api/events");
  es.addEventListener("status", (ev) => { setConn("live", "live"); render(JSON.parse(ev.data)); });
  es.addEventListener("failure", () => setConn("down", "redis unreachable"));
  es.onerror = () => setConn("down", "reconnecting…");
}

start();
