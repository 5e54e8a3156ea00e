// The receiver's page. Everything is read through POST /query (read-only, same origin) and
// every value is put on screen with textContent, never as HTML.
"use strict";

const EVENTS = "altertable.analytics.events";
const IDENTITIES = "altertable.analytics.identities";
const GUIDE_QUERIES = {
  "Events by currency":
    "SELECT\nevent,\nproperties->>'currency' AS currency,\nCOUNT(*) AS total\n" +
    "FROM altertable.analytics.events\nGROUP BY ALL\nORDER BY total DESC;",
  "One user's events with their identity traits":
    "SELECT\ne.event,\ne.properties,\ne.timestamp,\ne.identity_traits->>'email' AS email,\n" +
    "e.identity_traits->>'plan' AS plan\nFROM altertable.analytics.events e\n" +
    "WHERE e.distinct_id = 'u_01jza857w4f23s1hf2s61befmw'\nORDER BY e.timestamp DESC;",
  "Identities":
    "SELECT\ndistinct_id,\ntraits->>'email' AS email,\ntraits->>'plan' AS plan,\nupdated_at\n" +
    "FROM altertable.analytics.identities\nORDER BY updated_at DESC;",
};
const COLORS = ["#3b5bdb", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#1098ad", "#f08c00",
  "#5c940d", "#d6336c", "#495057"];

const state = { user: "local", password: "local", selected: null, needLogin: false };
const $ = (id) => document.getElementById(id);

class QueryError extends Error {}

async function query(statement, limit) {
  const body = { statement };
  if (limit !== undefined) body.limit = limit;
  const response = await fetch("/query", {
    method: "POST",
    credentials: "omit",
    headers: {
      "Content-Type": "application/json",
      "Accept": "application/x-ndjson",
      "Authorization": "Basic " + btoa(unescape(encodeURIComponent(state.user + ":" + state.password))),
    },
    body: JSON.stringify(body),
  });
  if (response.status === 401) {
    showLogin();
    throw new QueryError("the receiver refused the query credentials");
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).error || text; } catch (e) { /* plain text */ }
    throw new QueryError(message || "HTTP " + response.status);
  }
  const lines = text.split("\n").filter((line) => line.trim() !== "").map((line) => JSON.parse(line));
  const columns = (lines[1] || []).map((c) => (typeof c === "string" ? c : c.name));
  const rows = [];
  for (const item of lines.slice(2)) {
    if (!Array.isArray(item) && item && typeof item.error === "string") throw new QueryError(item.error);
    rows.push(item);
  }
  return { columns, rows };
}

function sqlString(text) {
  return "'" + String(text).replace(/'/g, "''") + "'";
}

function asObjects(result) {
  return result.rows.map((row) => Object.fromEntries(result.columns.map((c, i) => [c, row[i]])));
}

function cellText(value) {
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function pretty(value) {
  if (value === null || value === undefined) return "(none)";
  if (typeof value === "string") {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch (e) { return value; }
  }
  return JSON.stringify(value, null, 2);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const value of cells) {
    const td = document.createElement("td");
    td.textContent = cellText(value);
    tr.appendChild(td);
  }
  return tr;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

function showLogin() {
  if (state.needLogin) return;
  state.needLogin = true;
  $("login").hidden = false;
}

// -- live events -----------------------------------------------------------------------------

async function refreshEvents() {
  const conditions = [];
  const eventFilter = $("filter-event").value.trim();
  const distinctFilter = $("filter-distinct").value.trim();
  if (eventFilter) conditions.push("contains(event, " + sqlString(eventFilter) + ")");
  if (distinctFilter) conditions.push("contains(coalesce(distinct_id, ''), " + sqlString(distinctFilter) + ")");
  const where = conditions.length ? " WHERE " + conditions.join(" AND ") : "";
  const result = await query(
    "SELECT uuid, strftime(timestamp, '%Y-%m-%d %H:%M:%S') AS time, event, distinct_id, " +
    "environment, properties, identity_traits FROM " + EVENTS + where +
    " ORDER BY received_at DESC, timestamp DESC LIMIT 200");
  const tbody = $("events").tBodies[0];
  const rows = [];
  for (const event of asObjects(result)) {
    const tr = row([event.time, event.event, event.distinct_id, event.environment]);
    tr.dataset.uuid = event.uuid;
    if (event.uuid === state.selected) tr.className = "selected";
    tr.addEventListener("click", () => showDetails(event, tr));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  setStatus(result.rows.length + " recent event(s) · updated " + new Date().toLocaleTimeString(), false);
}

function showDetails(event, tr) {
  state.selected = event.uuid;
  for (const other of $("events").tBodies[0].rows) other.className = "";
  tr.className = "selected";
  $("details").hidden = false;
  $("details-title").textContent = event.event + " · " + cellText(event.distinct_id);
  $("details-properties").textContent = pretty(event.properties);
  $("details-traits").textContent = pretty(event.identity_traits);
}

// -- identities ------------------------------------------------------------------------------

async function refreshIdentities() {
  const result = await query(
    "SELECT distinct_id, environment, traits, distinct_ids, " +
    "strftime(updated_at, '%Y-%m-%d %H:%M:%S') AS updated FROM " + IDENTITIES +
    " ORDER BY updated_at DESC LIMIT 100");
  const rows = asObjects(result).map((identity) => row([
    identity.distinct_id,
    identity.environment,
    typeof identity.traits === "string" ? identity.traits : JSON.stringify(identity.traits),
    (identity.distinct_ids || []).filter((id) => id !== identity.distinct_id).join(", ") || "—",
    identity.updated,
  ]));
  $("identities").tBodies[0].replaceChildren(...rows);
}

// -- chart -----------------------------------------------------------------------------------

async function refreshChart() {
  const result = await query(
    "SELECT (epoch(date_trunc('minute', timestamp)) // 60)::BIGINT AS minute, event, " +
    "count(*)::INTEGER AS n FROM " + EVENTS +
    " WHERE timestamp >= now() - INTERVAL 1 HOUR AND timestamp <= now() + INTERVAL 1 MINUTE" +
    " GROUP BY ALL ORDER BY minute, event");
  drawChart(asObjects(result));
}

function drawChart(points) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 900;
  const height = canvas.clientHeight || 220;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const now = Math.floor(Date.now() / 60000);
  const first = now - 59;
  const names = [...new Set(points.map((p) => p.event))].sort();
  const color = (name) => COLORS[names.indexOf(name) % COLORS.length];
  const stacks = new Map();
  for (const p of points) {
    const minute = Number(p.minute);
    if (minute < first || minute > now) continue;
    if (!stacks.has(minute)) stacks.set(minute, []);
    stacks.get(minute).push(p);
  }
  let max = 1;
  for (const stack of stacks.values()) max = Math.max(max, stack.reduce((s, p) => s + p.n, 0));
  const left = 36, bottom = 20, top = 8;
  const plotHeight = height - bottom - top;
  const barWidth = (width - left) / 60;
  ctx.fillStyle = "#7a8394";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(String(max), 2, top + 10);
  ctx.fillText("0", 2, height - bottom);
  ctx.fillText("-60 min", left, height - 5);
  ctx.fillText("now", width - 24, height - 5);
  ctx.strokeStyle = "#dde1e7";
  ctx.beginPath();
  ctx.moveTo(left, height - bottom + 0.5);
  ctx.lineTo(width, height - bottom + 0.5);
  ctx.stroke();
  for (const [minute, stack] of stacks) {
    let y = height - bottom;
    const x = left + (minute - first) * barWidth;
    for (const p of stack) {
      const h = (p.n / max) * plotHeight;
      ctx.fillStyle = color(p.event);
      ctx.fillRect(x + 1, y - h, Math.max(1, barWidth - 2), h);
      y -= h;
    }
  }
  const legend = names.map((name) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color(name);
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(name));
    return item;
  });
  $("legend").replaceChildren(...legend);
}

// -- SQL box ---------------------------------------------------------------------------------

async function runSql() {
  const error = $("sql-error");
  const table = $("sql-result");
  error.hidden = true;
  $("sql-status").textContent = "running…";
  const started = performance.now();
  try {
    const result = await query($("sql").value, 1000);
    const head = document.createElement("tr");
    for (const name of result.columns) {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    }
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...result.rows.map((r) => row(r)));
    const ms = Math.round(performance.now() - started);
    $("sql-status").textContent = result.rows.length + " row(s) in " + ms + " ms (first 1000 shown)";
  } catch (e) {
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    error.textContent = e.message;
    error.hidden = false;
    $("sql-status").textContent = "failed";
  }
}

// -- where OTLP is heard -----------------------------------------------------------------------

// `altertable-otel serve` says which ports hear OTLP (GET /otlp); a receiver started from code
// has no such route, and the line stays hidden.
async function showOtlp() {
  let info;
  try {
    const response = await fetch("/otlp", { cache: "no-store" });
    if (!response.ok) return;
    info = await response.json();
  } catch (e) {
    return;
  }
  const parts = [];
  if (info.receiver_port) parts.push("OTLP/HTTP " + info.receiver_port + " (/v1/traces, /v1/logs)");
  const ports = info.ports || {};
  for (const [name, label] of [["grpc", "OTLP/gRPC"], ["http", "OTLP/HTTP"]]) {
    if (!(name in ports)) continue;
    parts.push(ports[name] ? label + " " + ports[name] : label + " standard port taken: not heard");
  }
  if (!parts.length) return;
  $("otlp").textContent = "Hears OTLP on: " + parts.join(" · ");
  $("otlp").hidden = false;
}

// -- wiring ----------------------------------------------------------------------------------

function every(ms, task) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try { await task(); } catch (e) { setStatus(e.message, true); } finally { running = false; }
  };
  tick();
  return setInterval(tick, ms);
}

function start() {
  for (const [title, sql] of Object.entries(GUIDE_QUERIES)) {
    const button = document.createElement("button");
    button.textContent = title;
    button.addEventListener("click", () => { $("sql").value = sql; runSql(); });
    $("guide-queries").appendChild(button);
  }
  $("run").addEventListener("click", runSql);
  $("sql").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql();
  });
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.user = $("login-user").value;
    state.password = $("login-password").value;
    state.needLogin = false;
    $("login").hidden = true;
  });
  for (const id of ["filter-event", "filter-distinct"]) {
    $(id).addEventListener("input", () => refreshEvents().catch((e) => setStatus(e.message, true)));
  }
  showOtlp();
  every(1000, refreshEvents);
  every(3000, refreshIdentities);
  every(5000, refreshChart);
}

document.addEventListener("DOMContentLoaded", start);
