// The operations page: the platform's health from Prometheus, refreshed by itself. The panels (title, PromQL,
// unit, legend) come from /pages/operations/panels — connectors/monitoring/panels.py, which the Grafana JSON in
// deploy/monitoring/grafana/ is generated from — and every query goes through the API's proxy of Prometheus's
// /api/v1/query and /api/v1/query_range (scope monitoring:read). Each panel draws its range as lines and lists
// the value of each series at one instant (the time shown at the top), exactly as Prometheus answered it.
import { api, clearError, el, mountPage, showError } from "/pages/static/common.js";
import { PALETTE, lineChart } from "/pages/static/charts.js";

const $ = (id) => document.getElementById(id);
const SCOPE = "monitoring:read";
const MAX_SERIES = 8; // lines drawn per chart (the largest now); the table lists every series
const POINTS = 120; // points per line: the step follows the range
let panels = [];
let alertsQuery = "";
let timer = null;
let refreshes = 0;
let drawn = null;

// --- numbers in the panels' units (Grafana's unit ids) ---

function plain(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)} G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
  if (Number.isInteger(v)) return String(v);
  return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : Number(v.toPrecision(3)).toString();
}

function seconds(v) {
  const a = Math.abs(v);
  if (a === 0) return "0 s";
  if (a < 1) return `${Number((v * 1000).toPrecision(3))} ms`;
  if (a < 120) return `${Number(v.toPrecision(3))} s`;
  if (a < 7200) return `${(v / 60).toFixed(1)} min`;
  return `${(v / 3600).toFixed(1)} h`;
}

function bytes(v) {
  const a = Math.abs(v);
  if (a >= 1048576) return `${(v / 1048576).toFixed(2)} MiB`;
  if (a >= 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${plain(v)} B`;
}

// The same, short enough for an axis (the chart's left margin): "17m", "4K", no "/s".
function axisFormatter(unit) {
  const short = (v, div, suffix) => `${Number((v / div).toPrecision(2))}${suffix}`;
  switch (unit) {
    case "Bps": return (v) => (Math.abs(v) >= 1048576 ? short(v, 1048576, "M") : Math.abs(v) >= 1024 ? short(v, 1024, "K") : plain(v));
    case "s": return (v) => (v === 0 ? "0" : Math.abs(v) < 1 ? short(v, 0.001, "ms") : Math.abs(v) < 120 ? short(v, 1, "s")
      : Math.abs(v) < 7200 ? short(v, 60, "m") : short(v, 3600, "h"));
    case "percentunit": return (v) => `${Math.round(v * 100)}%`;
    default: return (v) => (Math.abs(v) >= 1e4 ? short(v, 1e3, "k") : plain(v));
  }
}

export function formatter(unit) {
  switch (unit) {
    case "reqps": return (v) => `${plain(v)}/s`;
    case "Bps": return (v) => `${bytes(v)}/s`;
    case "s": return seconds;
    case "percentunit": return (v) => `${(v * 100).toFixed(1)} %`;
    default: return plain;
  }
}

// Prometheus's values are strings, "NaN" and "+Inf" included: a gap in a line, the raw text in a table.
function finite(text) {
  const v = Number(text);
  return Number.isFinite(v) ? v : null;
}

// Grafana's legend format: "{{processor}} → {{topic}}" with the series' labels.
export function legendOf(format, metric) {
  const name = (format || "").replace(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g, (_, label) => metric[label] ?? "").trim();
  if (name) return name;
  const labels = Object.entries(metric).filter(([k]) => k !== "__name__").map(([k, v]) => `${k}="${v}"`);
  return `${metric.__name__ || ""}{${labels.join(", ")}}`;
}

// --- panels ---

function buildPanels() {
  const grid = $("panels");
  grid.replaceChildren();
  for (const p of panels) {
    grid.append(el("section", { class: "panel", id: `panel-${p.id}`, dataset: { query: p.query, unit: p.unit, section: p.section } },
      el("h2", { text: p.title }),
      el("p", { class: "muted", text: `${p.section} — ${p.description}` }),
      el("p", { class: "error-text", id: `error-${p.id}`, role: "alert", hidden: true }),
      el("svg", {}), // replaced below: SVG needs its namespace
      el("div", { class: "table-wrap" }, el("table", { class: "result", id: `table-${p.id}` }))));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart");
    svg.id = `chart-${p.id}`;
    $(`panel-${p.id}`).querySelector("svg").replaceWith(svg);
  }
}

// An x label: the clock time (HH:MM) over an hour or more; below, how long ago ("-4:30", "now"), which stays short.
function timeLabel(frame) {
  const pad = (n) => String(n).padStart(2, "0");
  if (frame.end - frame.start >= 3600) {
    return (t) => { const d = new Date(t * 1000); return `${pad(d.getHours())}:${pad(d.getMinutes())}`; };
  }
  return (t) => {
    const ago = Math.round(frame.end - t);
    return ago <= 0 ? "now" : `-${Math.floor(ago / 60)}:${pad(ago % 60)}`;
  };
}

function drawChart(p, range, frame) {
  const xs = [];
  for (let t = frame.start; t <= frame.end; t += frame.step) xs.push(t);
  const last = (s) => { for (let i = s.points.length - 1; i >= 0; i -= 1) if (s.points[i][1] !== null) return s.points[i][1]; return -Infinity; };
  const series = range.result.map((s) => ({ name: legendOf(p.legend, s.metric), points: s.values.map(([t, v]) => [Number(t), finite(v)]) }))
    .sort((a, b) => last(b) - last(a) || a.name.localeCompare(b.name))
    .slice(0, MAX_SERIES)
    .map((s, i) => ({ ...s, color: PALETTE[i % PALETTE.length] }));
  lineChart($(`chart-${p.id}`), series, {
    xs, xLabel: timeLabel(frame), yFormat: axisFormatter(p.unit), title: p.title, empty: "No series in this range",
  });
}

function drawTable(p, instant, at) {
  const format = formatter(p.unit);
  const table = $(`table-${p.id}`);
  table.replaceChildren();
  table.dataset.time = String(at);
  const rows = instant.result.map((s) => ({ name: legendOf(p.legend, s.metric), raw: s.value[1] }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const body = el("tbody", {}, rows.map((r) => el("tr", { dataset: { series: r.name } },
    el("td", { text: r.name }),
    el("td", { class: "t-float", dataset: { value: r.raw }, text: finite(r.raw) === null ? `${r.raw} (no data)` : format(finite(r.raw)) }))));
  if (!rows.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 2, text: "No series now." })));
  table.append(el("thead", {}, el("tr", {}, el("th", { text: "Series" }), el("th", { text: "Now" }))), body);
}

function drawAlerts(instant) {
  const table = $("alerts-table");
  table.replaceChildren();
  const alerts = instant.result.map((s) => s.metric).sort((a, b) => (a.alertname || "").localeCompare(b.alertname || ""));
  $("alerts-none").hidden = alerts.length > 0;
  $("alerts").dataset.firing = String(alerts.length);
  if (!alerts.length) return;
  const skip = new Set(["__name__", "alertname", "alertstate", "severity"]);
  table.append(el("thead", {}, el("tr", {}, ["Alert", "Severity", "Labels", "Runbook"].map((h) => el("th", { text: h })))),
    el("tbody", {}, alerts.map((a) => el("tr", { dataset: { alert: a.alertname || "" }, class: a.severity === "critical" ? "undeclared" : undefined },
      el("td", { text: a.alertname || "?" }),
      el("td", { class: a.severity === "critical" ? "undeclared" : undefined, text: a.severity || "-" }),
      el("td", { text: Object.entries(a).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${v}`).join(" ") }),
      el("td", { text: `docs/runbooks.md#${(a.alertname || "").toLowerCase()}` })))));
}

const q = (path, params) => api(`/pages/operations/api/${path}?${new URLSearchParams(params)}`);

async function refresh() {
  clearTimeout(timer);
  const range = Number($("range").value);
  const every = Number($("refresh").value);
  const end = Math.floor(Date.now() / 1000);
  const step = Math.max(1, Math.round(range / POINTS));
  const frame = { start: end - Math.floor(range / step) * step, end, step };
  const problems = [];
  const alerts = q("query", { query: alertsQuery, time: String(end) }).then(({ data }) => drawAlerts(data))
    .catch((err) => problems.push(err));
  const results = await Promise.all(panels.map(async (p) => {
    const box = $(`error-${p.id}`);
    try {
      const [ranged, instant] = await Promise.all([
        q("query_range", { query: p.query, start: String(frame.start), end: String(end), step: String(step) }),
        q("query", { query: p.query, time: String(end) }),
      ]);
      drawChart(p, ranged.data, frame);
      drawTable(p, instant.data, end);
      box.hidden = true;
      return { p, ranged: ranged.data };
    } catch (err) {
      box.hidden = false;
      box.textContent = err.message;
      problems.push(err);
      return null;
    }
  }));
  await alerts;
  drawn = { results, frame };
  if (problems.length) showError($("errors"), problems[0]);
  else clearError($("errors"));
  $("updated").dateTime = new Date(end * 1000).toISOString();
  $("updated").textContent = new Date(end * 1000).toLocaleTimeString();
  refreshes += 1;
  document.body.dataset.time = String(end);
  document.body.dataset.refreshes = String(refreshes);
  if (problems.some((e) => e.status === 401)) return; // the key was revoked: no point in asking again
  if (every > 0) timer = setTimeout(refresh, every * 1000);
}

function keepInUrl() {
  const params = new URLSearchParams({ range: $("range").value, refresh: $("refresh").value });
  history.replaceState(null, "", `${window.location.pathname}?${params}`);
}

async function start() {
  const given = new URLSearchParams(window.location.search);
  for (const id of ["range", "refresh"]) {
    const value = given.get(id);
    if (value && [...$(id).options].some((o) => o.value === value)) $(id).value = value;
  }
  try {
    const defs = await api("/pages/operations/panels", { key: null });
    panels = defs.panels;
    alertsQuery = defs.alerts_query;
  } catch (err) {
    showError($("errors"), err);
    return;
  }
  buildPanels();
  $("controls").addEventListener("change", () => { keepInUrl(); refresh(); });
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); keepInUrl(); refresh(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => drawn && drawn.results.forEach((r) => r && drawChart(r.p, r.ranged, drawn.frame)), 200);
  });
  refresh();
}

mountPage(start, {
  key: {
    scope: SCOPE,
    probe: `/pages/operations/api/query?${new URLSearchParams({ query: "vector(1)" })}`,
    label: `API key (scope ${SCOPE}) `,
    goodOnServerError: true, // the key is good, Prometheus is not: the page says so
  },
});
