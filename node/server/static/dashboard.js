// modmesh dashboard: polls /_dashboard/data.json and renders it. Vanilla JS, no
// build step, no external resources (nodes are often offline). Everything from the
// node goes in through textContent, never as HTML: log lines carry request paths.
"use strict";

const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "modmesh-admin-token";

// The admin token, given once as /#admin-token=<token> (a fragment never reaches the
// server or its logs): kept for this tab only, and taken out of the address bar.
function adminToken() {
  const m = /(?:^#|&)admin-token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
}

function fmtRatio(r) {
  return r === null || r === undefined ? "–" : (r * 100).toFixed(1) + " %";
}

function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function fmtDuration(s) {
  s = Math.floor(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function fmtTime(t) {
  return t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "–";
}

function fmtAgo(t, now) {
  return t ? fmtDuration(Math.max(0, now - t)) + " ago" : "–";
}

function figure(name, value, text) {
  for (const e of document.querySelectorAll(`[data-figure="${name}"]`)) {
    e.textContent = text;
    e.dataset.value = value === null || value === undefined ? "" : String(value);
  }
}

function pill(text, kind) {
  return el("span", { class: "pill " + kind }, text);
}

const STATE_CLASS = { ok: "ok", closed: "ok", degraded: "bad", open: "bad", "half-open": "warn" };

// A table from column specs: [title, row => cell content, numeric?].
function table(columns, rows, attrs) {
  const head = el("tr", {}, ...columns.map(([title, , num]) => el("th", num ? { class: "num" } : {}, title)));
  const body = rows.map((row) => el("tr", attrs ? attrs(row) : {},
    ...columns.map(([, cell, num]) => el("td", { class: num ? "num" : "name" }, cell(row)))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function replace(id, ...children) {
  document.getElementById(id).replaceChildren(...children);
}

function empty(text) {
  return el("p", { class: "empty" }, text);
}

// An inline SVG sparkline of the values (nulls are gaps), with the latest value below.
function sparkline(id, values, fmt) {
  const w = 300, h = 48, pad = 3;
  const known = values.filter((v) => v !== null && v !== undefined);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  if (known.length > 0) {
    const max = Math.max(...known), min = Math.min(0, ...known);
    const span = max - min || 1;
    const x = (i) => (values.length === 1 ? w : (i * w) / (values.length - 1));
    const y = (v) => h - pad - ((v - min) / span) * (h - 2 * pad);
    const pts = [];
    values.forEach((v, i) => { if (v !== null && v !== undefined) pts.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
    if (pts.length === 1) pts.unshift(`0,${pts[0].split(",")[1]}`);
    const area = document.createElementNS(SVG, "polygon");
    const first = pts[0].split(",")[0], last = pts[pts.length - 1].split(",")[0];
    area.setAttribute("points", `${first},${h} ${pts.join(" ")} ${last},${h}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(area, line);
  }
  const latest = known.length ? known[known.length - 1] : null;
  replace(id, svg, el("span", { class: "now" }, "now " + fmt(latest) + (known.length ? ` · max ${fmt(Math.max(...known))}` : "")));
}

function renderNode(d) {
  const n = d.node;
  const status = document.getElementById("status");
  status.textContent = n.status;
  status.dataset.value = n.status;
  status.className = "pill " + (STATE_CLASS[n.status] || "");
  const bits = [`v${n.version}`, `up ${fmtDuration(n.uptime_s)}`, n.url, `store ${n.epoch}`];
  if (n.offline) bits.push("OFFLINE mode");
  if (d.view === "public") bits.push("public view");
  document.getElementById("node-meta").textContent = bits.filter(Boolean).join(" · ");
  const reasons = document.getElementById("reasons");
  reasons.textContent = (n.reasons || []).join(" · ");
  reasons.hidden = !(n.reasons || []).length;
  document.getElementById("updated").textContent = "updated " + fmtTime(d.generated_at);
  document.title = `modmesh ${n.status} · ${n.url}`;
}

function renderCache(d) {
  figure("requests_total", d.requests.total, fmtNum(d.requests.total));
  figure("hit_ratio", d.requests.hit_ratio, fmtRatio(d.requests.hit_ratio));
  figure("store_bytes", d.store.bytes, fmtBytes(d.store.bytes));
  figure("store_blobs", d.store.blobs, fmtNum(d.store.blobs));
  figure("disk_free", d.store.disk_free_bytes, fmtBytes(d.store.disk_free_bytes));
  figure("unverified", d.store.unverified, fmtNum(d.store.unverified));
  const kinds = { hit: "ok", stale: "warn", miss: "", revalidated: "", error: "bad" };
  replace("by-cache", ...Object.entries(d.requests.by_cache).map(([k, v]) =>
    el("span", { class: "pill " + (v ? kinds[k] || "" : ""), "data-figure": "by_cache." + k, "data-value": String(v) }, `${k} ${v}`)));
  const s = d.series;
  sparkline("spark-requests", s.map((p) => p.requests), fmtNum);
  sparkline("spark-ratio", s.map((p) => p.hit_ratio), fmtRatio);
  sparkline("spark-store", s.map((p) => p.store_bytes), fmtBytes);
}

function renderUpstreams(d) {
  if (!d.upstreams.length) {
    replace("upstreams-table", empty(d.node.offline ? "offline mode: no upstream is asked" : "no upstreams (GOPROXY=off)"));
    return;
  }
  replace("upstreams-table", table([
    ["Upstream", (u) => u.name],
    ["Breaker", (u) => pill(u.breaker, STATE_CLASS[u.breaker] || "")],
    ["Fetches", (u) => fmtNum(u.requests), true],
    ["Errors", (u) => fmtNum(u.errors), true],
    ["ms", (u) => fmtNum(u.avg_latency_ms), true],
  ], d.upstreams, (u) => ({ "data-upstream": u.name, "data-breaker": u.breaker })));
}

function renderSumdb(d) {
  if (!d.sumdb.length) {
    replace("sumdb-table", empty("no checksum database configured (sumdb off)"));
    return;
  }
  replace("sumdb-table", table([
    ["Database", (s) => s.name],
    ["Tree size", (s) => fmtNum(s.tree_size), true],
    ["State", (s) => (s.fork ? pill("FORK DETECTED", "bad") : s.tree_size === null ? pill("not yet verified", "warn") : pill("verified", "ok"))],
    ["Mismatches", (s) => fmtNum(s.mismatches), true],
  ], d.sumdb, (s) => ({ "data-sumdb": s.name })));
}

function renderTop(d) {
  if (!(d.top_modules || []).length) {
    replace("top-table", empty("nothing cached yet"));
    return;
  }
  replace("top-table", table([
    ["Module", (m) => m.module],
    ["Hits", (m) => fmtNum(m.hits), true],
    ["Versions", (m) => fmtNum(m.versions), true],
    ["Size", (m) => fmtBytes(m.bytes), true],
  ], d.top_modules || [], (m) => ({ "data-module": m.module, "data-hits": String(m.hits) })));
}

// Peers are the mesh's members (node/hooks.py MeshStatus, via dashboard_view.mesh_view).
const PEER_STATE_CLASS = { alive: "ok", suspect: "warn", dead: "bad" };

function renderMesh(d) {
  const m = d.mesh || { enabled: false };
  if (m.restricted) {
    // Without admin rights the node says only whether a mesh runs (as /_mesh/status would).
    replace("mesh-body", el("p", { class: "empty", "data-figure": "mesh", "data-value": "restricted" },
      m.enabled ? "a mesh runs on this node; " : "", "its details are for admins: open /#admin-token=<token>"));
    return;
  }
  if (!m.enabled) {
    replace("mesh-body", el("p", { class: "empty", "data-figure": "mesh", "data-value": "disabled" }, "mesh not enabled on this node"));
    return;
  }
  if (m.error) {
    replace("mesh-body", el("p", { "data-figure": "mesh", "data-value": "error" }, pill("unavailable", "bad"), " ", m.error));
    return;
  }
  const peers = m.peers || [];
  const kv = el("div", { class: "kv" },
    el("span", {}, "Peers ", el("strong", { "data-figure": "mesh_peers", "data-value": String(peers.length) }, String(peers.length))),
    el("span", {}, "Sync backlog ", el("strong", { "data-figure": "mesh_backlog", "data-value": String(m.backlog) }, fmtNum(m.backlog))),
    ...Object.entries(m.summary || {}).map(([k, v]) => el("span", { class: "muted" }, `${k} ${v}`)));
  if (!peers.length) {
    replace("mesh-body", kv, empty("no peers seen"));
    return;
  }
  replace("mesh-body", kv, table([
    ["Peer", (p) => el("span", {}, p.id, el("br"), el("span", { class: "muted" }, p.url))],
    // The state, and below it how we know the peer (static, mdns, gossip) or its quarantine.
    ["State", (p) => el("span", {}, pill(p.state, PEER_STATE_CLASS[p.state] || ""), el("br"),
      p.quarantined_s ? pill(`quarantined ${fmtDuration(p.quarantined_s)}`, "bad") : el("span", { class: "muted" }, p.source))],
    ["Seen", (p) => fmtDuration(p.last_seen_s) + " ago"],
    ["Files", (p) => fmtNum(p.inventory), true],
    ["Backlog", (p) => fmtNum(p.backlog), true],
  ], peers, (p) => ({ "data-peer": p.id, "data-state": p.state })));
}

function renderErrors(d) {
  const errors = d.errors || [];
  if (d.errors_hidden) {
    // Log lines are free text (addresses, module names): admins only.
    replace("errors-list", el("p", { class: "empty" },
      el("strong", { "data-figure": "errors_hidden", "data-value": String(d.errors_hidden) }, String(d.errors_hidden)),
      " warnings and errors withheld: they are for admins (open /#admin-token=<token>)"));
    return;
  }
  if (!errors.length) {
    replace("errors-list", empty("no warnings or errors since the node started"));
    return;
  }
  replace("errors-list", el("ul", { class: "errors" }, ...errors.map((e) => el("li", {},
    el("time", { title: new Date(e.t * 1000).toISOString() }, fmtAgo(e.t, d.generated_at)),
    pill(e.level, e.level === "warning" ? "warn" : "bad"),
    el("span", { class: "logger" }, e.logger),
    el("span", { class: "msg" }, e.message)))));
}

function render(d) {
  renderNode(d);
  renderCache(d);
  renderUpstreams(d);
  renderSumdb(d);
  renderTop(d);
  renderMesh(d);
  renderErrors(d);
}

async function refresh() {
  try {
    const token = adminToken();
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const resp = await fetch("_dashboard/data.json", { cache: "no-store", headers });
    if (!resp.ok) throw new Error(`data.json answered ${resp.status}`);
    render(await resp.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.textContent = "unreachable";
    status.className = "pill bad";
    document.getElementById("updated").textContent = `cannot load figures: ${err.message}`;
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

refresh();
