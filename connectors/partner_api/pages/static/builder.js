// The template builder: pick metrics, dimensions, period and filters, run, save as a (versioned) template,
// copy its REST and IQY links. Every call is the public API's (/v1/query, /v1/query/templates).
import { api, clearError, el, mountPage, periodText, renderTable, showError } from "/pages/static/common.js";

const PERIODS = [
  ["today", "today"], ["yesterday", "yesterday"], ["last7", "the last 7 days, today included"],
  ["previous7", "the 7 days before today"], ["last30", "the last 30 days, today included"],
  ["previous30", "the 30 days before today"], ["lastweek", "last week (Monday to Sunday)"],
  ["lastmonth", "last month"], ["{R:{D:-1}}", "yesterday (AT Internet form)"], ["{R:{W:-1}}", "last week (AT Internet form)"],
  ["{R:{M:-1}}", "last month (AT Internet form)"], ["{R:{M:{start:-12,end:-1}}}", "the 12 months before this one"],
];
const OPS = [["eq", "is"], ["ne", "is not"], ["in", "is one of"], ["not_in", "is none of"], ["contains", "contains"], ["starts_with", "starts with"]];
const LINKS = [["json", "REST (JSON)"], ["iqy", "Excel web query (IQY)"], ["csv", "CSV"], ["xlsx", "XLSX"], ["html", "HTML table"]];
const LINK_STORE = "passerelle.links.";

const $ = (id) => document.getElementById(id);
let catalog = { metrics: [], dimensions: [] };
let dimensionOrder = [];
let current = null; // the template open in the builder: {id, version, name}
let kept = {}; // fields of an opened template the form does not edit (segment, offset, further sort keys)

function checked(container) {
  return [...container.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
}

function dimensionType(name) {
  const found = catalog.dimensions.find((d) => d.name === name);
  return found ? found.type : "text";
}

function filterValue(dimension, op, text) {
  const one = (t) => (dimensionType(dimension) === "int" && /^-?\d+$/.test(t) ? Number(t) : t);
  if (op === "in" || op === "not_in") return text.split(",").map((t) => t.trim()).filter((t) => t !== "").map(one);
  if ((op === "eq" || op === "ne") && text.trim() === "") return null; // "is (not) missing"
  return one(text.trim());
}

function addFilter(filter = { dimension: catalog.dimensions[0].name, op: "eq", value: "" }) {
  const dimension = el("select", { class: "f-dimension", "aria-label": "filter dimension" },
    catalog.dimensions.map((d) => el("option", { value: d.name, selected: d.name === filter.dimension, text: d.label })));
  const op = el("select", { class: "f-op", "aria-label": "filter operator" },
    OPS.map(([value, text]) => el("option", { value, selected: value === (filter.op || "eq"), text })));
  const shown = filter.value === null ? "" : Array.isArray(filter.value) ? filter.value.join(", ") : String(filter.value);
  const value = el("input", { type: "text", class: "f-value", value: shown, placeholder: "value (a, b for one of; empty: missing)", size: 30, "aria-label": "filter value" });
  const row = el("div", { class: "row filter" }, dimension, op, value);
  row.append(el("button", { type: "button", class: "secondary", text: "Remove", onclick: () => row.remove() }));
  $("filters").append(row);
}

function refreshSort(selected) {
  const sort = $("sort");
  const keep = selected !== undefined ? selected : sort.value;
  const metrics = checked($("metrics"));
  sort.replaceChildren(el("option", { value: "", text: "dimensions" }));
  for (const name of [...metrics, ...dimensionOrder]) {
    const item = [...catalog.metrics, ...catalog.dimensions].find((x) => x.name === name);
    sort.append(el("option", { value: name, selected: name === keep, text: item ? item.label : name }));
  }
}

function refreshDimensionOrder() {
  $("dimension-order").replaceChildren(...dimensionOrder.map((d) => el("span", { class: "chip", text: d })));
  refreshSort();
}

function buildQuery() {
  const query = { ...kept };
  const site = $("site").value.trim();
  if (site) query.site = site;
  query.metrics = checked($("metrics"));
  if (dimensionOrder.length) query.dimensions = [...dimensionOrder];
  const filters = [...document.querySelectorAll("#filters .filter")].map((row) => {
    const dimension = row.querySelector(".f-dimension").value;
    const op = row.querySelector(".f-op").value;
    return { dimension, op, value: filterValue(dimension, op, row.querySelector(".f-value").value) };
  });
  if (filters.length) query.filters = filters;
  if ($("sort").value) {
    const rest = Array.isArray(kept.sort) ? kept.sort.slice(1) : [];
    query.sort = [{ by: $("sort").value, desc: $("sort-desc").checked }, ...rest];
  } else delete query.sort;
  if ($("limit").value) query.limit = Number($("limit").value);
  query.period = $("period").value.trim() || "last7";
  if ($("compare").checked) query.compare = true;
  return query;
}

function loadQuery(query) {
  const { site, metrics = [], dimensions = [], filters = [], sort = [], limit, period, compare, ...rest } = query;
  kept = rest;
  if (sort.length > 1) kept.sort = sort;
  $("site").value = site || "";
  for (const box of $("metrics").querySelectorAll("input")) box.checked = metrics.includes(box.value);
  for (const box of $("dimensions").querySelectorAll("input")) box.checked = dimensions.includes(box.value);
  dimensionOrder = [...dimensions];
  refreshDimensionOrder();
  $("filters").replaceChildren();
  filters.forEach((f) => addFilter(f));
  refreshSort(sort.length ? sort[0].by : "");
  $("sort-desc").checked = Boolean(sort.length && sort[0].desc);
  $("limit").value = limit || "";
  $("period").value = period || "last7";
  $("compare").checked = Boolean(compare);
}

async function run(event) {
  event.preventDefault();
  clearError($("query-errors"));
  $("run").disabled = true;
  try {
    const result = await api("/v1/query", { method: "POST", body: buildQuery() });
    renderTable($("result"), result);
    $("result-period").textContent = periodText(result);
    $("result-count").textContent = `${result.rows.length} of ${result.total_rows ?? result.rows.length} rows`;
    $("result-panel").hidden = false;
  } catch (err) {
    showError($("query-errors"), err);
  } finally {
    $("run").disabled = false;
  }
}

async function copy(input, button) {
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand("copy"); // no clipboard API outside a secure context
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function showLinks(links) {
  const body = $("links");
  body.replaceChildren();
  if (!links) {
    $("links-panel").hidden = true;
    return;
  }
  for (const [format, label] of LINKS) {
    if (!links[format]) continue;
    const input = el("input", { type: "text", readonly: true, value: links[format], id: `link-${format}`, "aria-label": label });
    const button = el("button", { type: "button", class: "secondary", text: "Copy" });
    button.addEventListener("click", () => copy(input, button));
    body.append(el("tr", {}, el("th", { text: label }), el("td", {}, input), el("td", {}, button)));
  }
  $("links-panel").hidden = false;
}

function setCurrent(template) {
  current = template ? { id: template.id, version: template.version, name: template.name } : null;
  $("template-info").textContent = template ? `${template.id}, version ${template.version}` : "";
  $("save-new").hidden = !template;
  $("renew-token").hidden = !template;
  const stored = template ? sessionStorage.getItem(LINK_STORE + template.id) : null;
  showLinks(stored ? JSON.parse(stored) : null);
}

async function loadTemplates(select) {
  const { templates } = await api("/v1/query/templates");
  const list = $("template-select");
  list.replaceChildren(el("option", { value: "", text: "New template" }));
  for (const t of templates) list.append(el("option", { value: t.id, selected: t.id === select, text: `${t.name} (v${t.version})` }));
}

async function openTemplate() {
  const id = $("template-select").value;
  clearError($("save-errors"));
  $("save-status").textContent = "";
  if (!id) {
    setCurrent(null);
    return;
  }
  try {
    const template = await api(`/v1/query/templates/${encodeURIComponent(id)}`);
    loadQuery(template.query);
    $("template-name").value = template.name;
    setCurrent(template);
  } catch (err) {
    showError($("save-errors"), err);
  }
}

async function save(asNew) {
  clearError($("save-errors"));
  $("save-status").textContent = "";
  const body = { name: $("template-name").value.trim(), query: buildQuery() };
  try {
    let template;
    if (current && !asNew) {
      template = await api(`/v1/query/templates/${encodeURIComponent(current.id)}`, { method: "PUT", body });
    } else {
      template = await api("/v1/query/templates", { method: "POST", body });
      sessionStorage.setItem(LINK_STORE + template.id, JSON.stringify(template.links));
    }
    await loadTemplates(template.id);
    setCurrent(template);
    $("save-status").className = "notice";
    $("save-status").textContent = `Saved: ${template.name}, version ${template.version}`;
  } catch (err) {
    if (err.status === 403) err.errors.push({ field: "hint", reason: "saving needs a key with the scope query:write" });
    showError($("save-errors"), err);
  }
}

async function renewToken() {
  if (!current || !window.confirm("New run links: the links given so far (Excel files, imports) stop working. Go on?")) return;
  clearError($("save-errors"));
  try {
    const template = await api(`/v1/query/templates/${encodeURIComponent(current.id)}/token`, { method: "POST" });
    sessionStorage.setItem(LINK_STORE + template.id, JSON.stringify(template.links));
    await loadTemplates(template.id);
    setCurrent(template);
  } catch (err) {
    showError($("save-errors"), err);
  }
}

async function ready() {
  try {
    catalog = await api("/pages/catalog");
  } catch (err) {
    showError($("query-errors"), err);
    return;
  }
  $("period-presets").replaceChildren(...PERIODS.map(([value, label]) => el("option", { value, label })));
  $("metrics").replaceChildren(...catalog.metrics.map((m) => el("label", { title: m.definition },
    el("input", { type: "checkbox", value: m.name, name: "metric", checked: m.name === "visits" }), " ", m.label)));
  $("dimensions").replaceChildren(...catalog.dimensions.map((d) => el("label", {},
    el("input", { type: "checkbox", value: d.name, name: "dimension" }), " ", d.label)));
  $("metrics").addEventListener("change", () => refreshSort());
  $("dimensions").addEventListener("change", (event) => {
    const name = event.target.value;
    dimensionOrder = event.target.checked ? [...dimensionOrder.filter((d) => d !== name), name] : dimensionOrder.filter((d) => d !== name);
    refreshDimensionOrder();
  });
  refreshSort();
  $("add-filter").addEventListener("click", () => addFilter());
  $("query-form").addEventListener("submit", run);
  $("template-select").addEventListener("change", openTemplate);
  $("save").addEventListener("click", () => save(false));
  $("save-new").addEventListener("click", () => save(true));
  $("renew-token").addEventListener("click", renewToken);
  try {
    await loadTemplates();
  } catch (err) {
    showError($("save-errors"), err);
  }
  document.body.dataset.ready = "true";
}

mountPage(ready);
