// A small SVG chart module of ours (no library, nothing fetched): line charts and bar charts.
//
//   lineChart(svg, series, opts)   series: [{name, points: [[x, y], ...]}]
//       opts.xs      the x values in order (categories: hours, days…); default: every x of the points, sorted
//       opts.xLabel  x value -> axis text;  opts.yFormat  number -> axis/tooltip text
//       opts.fill    the value of an x a series has no point for (e.g. 0 visits); default: a gap
//   barChart(svg, bars, opts)      bars: [{label, value, color?, note?}], horizontal bars in the given order
//       opts.format  number -> text written after each bar
//   both: opts.width (default: the SVG's width on the page), opts.height, opts.title (aria-label),
//         opts.empty (text when there is nothing to draw)
//
// Each point and bar carries a <title> (the browser's tooltip); legends are plain <text>, so a test or a screen
// reader finds the series' names. The palette is colour-blind friendly (Okabe-Ito).

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"];

function node(tag, attrs = {}, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

function start(svg, opts, width, height) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
  if (opts.title) svg.setAttribute("aria-label", opts.title);
}

function emptyChart(svg, opts, width, height) {
  svg.append(node("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, opts.empty || "No data"));
}

// 0, a round step, …: about `count` ticks covering [0, max]; whole steps when the values are counts.
export function niceTicks(max, count = 4, whole = false) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const found = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const step = whole ? Math.max(1, Math.ceil(found)) : found;
  const ticks = [];
  for (let v = 0; v < max + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

const plain = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(2));

export function lineChart(svg, series, opts = {}) {
  const width = opts.width || Math.round(svg.clientWidth) || 640; // drawn at its box's width: text stays its size
  const legendRows = Math.ceil(series.length / 3);
  const height = (opts.height || 220) + legendRows * 16;
  const yFormat = opts.yFormat || plain;
  const xLabel = opts.xLabel || String;
  start(svg, opts, width, height);
  const xs = opts.xs || [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort();
  const all = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  if (!series.length || !xs.length || !all.length) return emptyChart(svg, opts, width, height);
  const left = 48, right = 12, top = 10, bottom = 24 + legendRows * 16;
  const plotW = width - left - right, plotH = height - top - bottom;
  const ticks = niceTicks(Math.max(...all), 4, all.every(Number.isInteger));
  const yMax = ticks[ticks.length - 1] || 1;
  const xAt = (i) => left + (xs.length === 1 ? plotW / 2 : (i * plotW) / (xs.length - 1));
  const yAt = (v) => top + plotH - (v / yMax) * plotH;
  const axis = node("g", { class: "axis" });
  for (const t of ticks) {
    axis.append(node("line", { x1: left, x2: width - right, y1: yAt(t), y2: yAt(t), class: "grid" }));
    axis.append(node("text", { x: left - 6, y: yAt(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  const every = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, i) => {
    if (i % every === 0) axis.append(node("text", { x: xAt(i), y: top + plotH + 16, "text-anchor": "middle" }, xLabel(x)));
  });
  svg.append(axis);
  const index = new Map(xs.map((x, i) => [String(x), i]));
  series.forEach((s, n) => {
    const color = s.color || PALETTE[n % PALETTE.length];
    const given = new Map(s.points.filter((p) => index.has(String(p[0]))).map((p) => [String(p[0]), p[1]]));
    const points = xs.map((x, i) => [i, given.has(String(x)) ? given.get(String(x)) : opts.fill ?? null, x])
      .filter((p) => p[1] !== null && p[1] !== undefined);
    const g = node("g", { class: "series", "data-name": s.name });
    if (points.length > 1) {
      const d = points.map((p, i) => `${i ? "L" : "M"}${xAt(p[0]).toFixed(1)},${yAt(p[1]).toFixed(1)}`).join("");
      g.append(node("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    }
    for (const [i, v, x] of points) {
      const dot = node("circle", { cx: xAt(i), cy: yAt(v), r: 3, fill: color });
      dot.append(node("title", {}, `${s.name} — ${xLabel(x)}: ${yFormat(v)}`));
      g.append(dot);
    }
    svg.append(g);
    const lx = left + (n % 3) * (plotW / 3), ly = height - legendRows * 16 + Math.floor(n / 3) * 16 + 4;
    const legend = node("g", { class: "legend" });
    legend.append(node("rect", { x: lx, y: ly, width: 10, height: 10, fill: color }));
    legend.append(node("text", { x: lx + 14, y: ly + 9 }, s.name));
    svg.append(legend);
  });
}

export function barChart(svg, bars, opts = {}) {
  const width = opts.width || Math.round(svg.clientWidth) || 640; // drawn at its box's width: text stays its size
  const rowH = 26;
  const height = opts.height || Math.max(60, bars.length * rowH + 12);
  const format = opts.format || plain;
  start(svg, opts, width, height);
  const values = bars.map((b) => b.value).filter((v) => v !== null && v !== undefined);
  if (!bars.length || !values.length) return emptyChart(svg, opts, width, height);
  const labelW = opts.labelWidth || 190, valueW = 80;
  const max = Math.max(...values, 0) || 1;
  const scale = (width - labelW - valueW) / max;
  const step = (height - 12) / bars.length;
  bars.forEach((b, n) => {
    const y = 6 + n * step, h = Math.min(18, step - 6);
    const g = node("g", { class: "bar", "data-label": b.label });
    g.append(node("text", { x: labelW - 8, y: y + h / 2 + 4, "text-anchor": "end" }, b.label));
    const w = Math.max(b.value ? 1 : 0, (b.value || 0) * scale);
    const rect = node("rect", { x: labelW, y, width: w, height: h, fill: b.color || PALETTE[0] });
    rect.append(node("title", {}, `${b.label}: ${format(b.value || 0)}${b.note ? ` (${b.note})` : ""}`));
    g.append(rect);
    g.append(node("text", { x: labelW + w + 6, y: y + h / 2 + 4, class: "value" }, format(b.value || 0)));
    svg.append(g);
  });
}
