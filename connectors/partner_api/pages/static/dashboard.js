// The live dashboard: five panels, each one query of /v1/query (the queries come from /pages/dashboard/queries,
// the same ones tests and benches run), refreshed by themselves every few seconds, so a campaign declared a
// moment ago shows its hits at the next refresh. The controls are kept in the URL (?site=&period=&refresh=).
import { api, clearError, el, formatValue, mountPage, periodText, renderTable, showError } from "/pages/static/common.js";
import { PALETTE, barChart, lineChart } from "/pages/static/charts.js";

const $ = (id) => document.getElementById(id);
const MAX_SERIES = 6;
const DECLARED = "#009E73", UNDECLARED = "#D55E00";
let timer = null;
let refreshes = 0;
let drawn = null; // the last results and step, redrawn when the window's width changes

function days(start, end) {
  const out = [];
  for (let d = new Date(`${start}T00:00:00Z`); d <= new Date(`${end}T00:00:00Z`); d.setUTCDate(d.getUTCDate() + 1)) {
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

// Rows [x, ...keys, value] -> at most MAX_SERIES series (the largest), the rest summed as "other".
function toSeries(rows, nameOf) {
  const byName = new Map();
  for (const row of rows) {
    const name = nameOf(row);
    if (!byName.has(name)) byName.set(name, new Map());
    const points = byName.get(name);
    points.set(row[0], (points.get(row[0]) || 0) + (row[row.length - 1] || 0));
  }
  const total = (points) => [...points.values()].reduce((a, b) => a + b, 0);
  const ranked = [...byName.entries()].sort((a, b) => total(b[1]) - total(a[1]) || String(a[0]).localeCompare(String(b[0])));
  const series = ranked.slice(0, MAX_SERIES).map(([name, points]) => ({ name, points: [...points.entries()] }));
  if (ranked.length > MAX_SERIES) {
    const other = new Map();
    for (const [, points] of ranked.slice(MAX_SERIES)) for (const [x, v] of points) other.set(x, (other.get(x) || 0) + v);
    series.push({ name: "other", points: [...other.entries()], color: PALETTE[7] });
  }
  return series;
}

// The x values of a traffic chart: every hour (up to the current one when the period is today in its zone) or
// every day of the period; a missing point is 0 visits (opts.fill).
function timeAxis(result, step) {
  const { start, end, timezone } = result.period;
  if (step === "hour") {
    const now = new Date();
    const zone = { timeZone: timezone || "UTC" };
    const today = new Intl.DateTimeFormat("en-CA", zone).format(now); // yyyy-mm-dd
    const hour = Number(new Intl.DateTimeFormat("en-GB", { ...zone, hour: "numeric", hourCycle: "h23" }).format(now));
    const last = start === end && end === today ? hour : 23;
    return { xs: [...Array(last + 1).keys()], xLabel: (h) => `${String(h).padStart(2, "0")}h`, fill: 0 };
  }
  return { xs: days(start, end), xLabel: (d) => String(d).slice(5), fill: 0 };
}

// A row's value by column name: the panels' queries are defined server-side (data_query/dashboard.py).
function getter(result) {
  const index = new Map(result.columns.map((c, i) => [c.name, i]));
  return (row, name) => (index.has(name) ? row[index.get(name)] : null);
}

const PANELS = {
  traffic_by_source(result, step) {
    const v = getter(result);
    const series = toSeries(result.rows, (r) => (v(r, "source") ? `${v(r, "source")} (${v(r, "medium") ?? "?"})` : v(r, "medium") ?? "(none)"));
    lineChart($("chart-traffic_by_source"), series, { ...timeAxis(result, step), title: "Visits by source over time", empty: "No visits in this period" });
    renderTable($("table-traffic_by_source"), result);
  },
  traffic_by_campaign(result, step) {
    const v = getter(result);
    const series = toSeries(result.rows, (r) => v(r, "campaign"));
    lineChart($("chart-traffic_by_campaign"), series, { ...timeAxis(result, step), title: "Visits by campaign over time", empty: "No campaign visits in this period" });
    renderTable($("table-traffic_by_campaign"), result);
  },
  top_campaigns(result) {
    const v = getter(result);
    const status = (r) => (v(r, "campaign_key") ? "declared" : "undeclared"); // attributed to a declared campaign?
    barChart($("chart-top_campaigns"), result.rows.map((r) => ({
      label: v(r, "campaign_name") || v(r, "campaign"), value: v(r, "hits"),
      color: v(r, "campaign_key") ? DECLARED : UNDECLARED, note: `${status(r)}, hits`,
    })), { title: "Hits of the top campaigns", empty: "No campaign hits in this period" });
    renderTable($("table-top_campaigns"), result, {
      extra: [{ name: "status", label: "Status", value: status, cls: status }],
    });
  },
  remarketing_funnel(result) {
    const row = result.rows[0] || [];
    const steps = result.columns.map((c, i) => ({ label: c.label, value: row[i] ?? 0, type: c.type })).filter((s) => s.type === "int");
    barChart($("chart-remarketing_funnel"), steps.map((s, i) => ({ label: s.label, value: s.value, color: PALETTE[i] })),
      { title: "Remarketing funnel", labelWidth: 220 });
    renderTable($("table-remarketing_funnel"), result);
  },
  postview(result) {
    const v = getter(result);
    barChart($("chart-postview"), result.rows.map((r) => ({
      label: v(r, "campaign_name") || v(r, "campaign_key") || "(no campaign)", value: v(r, "postview_visits"),
      note: `${formatValue(v(r, "postview_conversions"), "int")} conversions`,
    })),
      { title: "Post-view visits by campaign", empty: "No post-view visits in this period" });
    renderTable($("table-postview"), result);
  },
};

function controls() {
  return { site: $("site").value.trim(), period: $("period").value, refresh: Number($("refresh").value) };
}

async function refresh() {
  clearTimeout(timer);
  const { site, period, refresh: every } = controls();
  try {
    const params = new URLSearchParams({ period, ...(site ? { site } : {}) });
    const { panels } = await api(`/pages/dashboard/queries?${params}`);
    const step = panels.traffic_by_source.dimensions[0];
    const names = Object.keys(panels);
    const results = await Promise.all(names.map((name) => api("/v1/query", { method: "POST", body: panels[name] })));
    names.forEach((name, i) => PANELS[name](results[i], step));
    drawn = { names, results, step };
    clearError($("errors"));
    $("period-text").textContent = `— ${periodText(results[0])}`;
    const now = new Date();
    $("updated").dateTime = now.toISOString();
    $("updated").textContent = now.toLocaleTimeString();
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
  } catch (err) {
    showError($("errors"), err);
    if (err.status === 401) return; // the key was revoked: no point in asking again
  }
  if (every > 0) timer = setTimeout(refresh, every * 1000);
}

function keepInUrl() {
  const { site, period, refresh: every } = controls();
  const params = new URLSearchParams({ period, refresh: String(every), ...(site ? { site } : {}) });
  history.replaceState(null, "", `${window.location.pathname}?${params}`);
}

function ready() {
  const given = new URLSearchParams(window.location.search);
  if (given.get("site")) $("site").value = given.get("site");
  for (const [id, name] of [["period", "period"], ["refresh", "refresh"]]) {
    const value = given.get(name);
    if (value && [...$(id).options].some((o) => o.value === value)) $(id).value = value;
  }
  $("controls").addEventListener("change", () => { keepInUrl(); refresh(); });
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); keepInUrl(); refresh(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => drawn && drawn.names.forEach((name, i) => PANELS[name](drawn.results[i], drawn.step)), 200);
  });
  refresh();
}

mountPage(ready);
