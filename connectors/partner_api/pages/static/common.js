// What every page of the partner API shares: the API key, API calls, tables, the header (navigation + key).
//
// The key is pasted once and kept in this tab's sessionStorage (gone when the tab closes, never in a URL or a
// cookie), and sent as the API's X-Api-Key header. Nothing here writes HTML from data: text goes through
// textContent, so a campaign named "<script>" stays text (the page's Content-Security-Policy is the second fence).

const KEY_STORE = "passerelle.apiKey";

export class ApiError extends Error {
  constructor(status, errors) {
    super(errors.map((e) => `${e.field}: ${e.reason}`).join("; ") || `HTTP ${status}`);
    this.status = status;
    this.errors = errors;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function keyId() {
  const key = apiKey();
  return key ? key.split(".")[0] : null;
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
}

// One API call: JSON in and out; an ApiError carrying the API's {"errors": [...]} otherwise.
export async function api(path, { method = "GET", body, key = apiKey() } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers["X-Api-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, [{ field: "network", reason: `the API did not answer (${err.message})` }]);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const errors = data && Array.isArray(data.errors) ? data.errors : [{ field: "http", reason: `HTTP ${response.status}` }];
    throw new ApiError(response.status, errors);
  }
  return data;
}

// el("td", {class: "x", dataset: {value: "1"}}, "text", child) — text children are text nodes, never HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// How a value of a column type reads in a table; the raw value stays in the cell's data-value.
export function formatValue(value, type) {
  if (value === null || value === undefined) return "";
  switch (type) {
    case "money":
      return Number(value).toFixed(2);
    case "percent":
      return `${(Number(value) * 100).toFixed(1)} %`;
    case "float":
      return Number.isInteger(value) ? String(value) : Number(value).toFixed(2);
    default:
      return String(value);
  }
}

// Fill <table> with a query result (the API's JSON). extra: [{label, value(row) -> text, cls(row)}] appended columns.
export function renderTable(table, result, { extra = [] } = {}) {
  table.replaceChildren();
  const head = el("tr", {}, result.columns.map((c) => el("th", { dataset: { name: c.name, type: c.type }, text: c.label })));
  for (const column of extra) head.append(el("th", { dataset: { derived: column.name }, text: column.label }));
  const body = el("tbody");
  for (const row of result.rows) {
    const tr = el("tr");
    row.forEach((value, i) => {
      const type = result.columns[i].type;
      tr.append(el("td", { class: `t-${type}`, dataset: { value: JSON.stringify(value) }, text: formatValue(value, type) }));
    });
    for (const column of extra) {
      tr.append(el("td", { class: column.cls ? column.cls(row) : undefined, dataset: { derived: column.name }, text: column.value(row) }));
    }
    body.append(tr);
  }
  if (!result.rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: result.columns.length + extra.length, text: "No rows for this period." })));
  }
  table.append(el("thead", {}, head), body);
}

export function periodText(result) {
  const p = result.period;
  if (!p) return "";
  let text = `${p.start} to ${p.end} (${p.expression}, ${p.timezone})`;
  if (result.comparison) text += `; compared with ${result.comparison.start} to ${result.comparison.end}`;
  return text;
}

export function showError(box, err) {
  box.hidden = false;
  box.replaceChildren();
  const errors = err instanceof ApiError ? err.errors : [{ field: "page", reason: String(err && err.message ? err.message : err) }];
  box.append(el("ul", {}, errors.map((e) => el("li", {}, el("strong", { text: e.field }), ": ", e.reason))));
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

// The key the data pages need; another page passes its own (scope, a call that needs it, the form's label).
const QUERY_KEY = {
  scope: "query:read",
  probe: "/v1/query/templates",
  label: "API key (scope query:read; query:write to save templates) ",
  goodOnServerError: false,
};

// null when ``key`` may call the page's probe; otherwise why not, in a sentence. With goodOnServerError, a 5xx
// means the key passed and what is behind the endpoint failed (the page shows that itself).
async function checkKey(key, { scope, probe, goodOnServerError }) {
  try {
    await api(probe, { key });
    return null;
  } catch (err) {
    if (err.status === 401) return "This API key is not valid (unknown, wrong or revoked).";
    if (err.status === 403) return `This API key lacks the scope ${scope}.`;
    if (err.status === 429) return "Too many attempts with this key id; retry in a minute.";
    if (goodOnServerError && err.status >= 500) return null;
    return err.message;
  }
}

// Build the header (navigation and key) into <header id="top">; call ready() once a working key is known.
// The page's <main> stays hidden until then. A page that calls no /v1 endpoint passes {key: false}; a page
// needing another scope passes {key: {scope, probe, label, goodOnServerError}}.
export async function mountPage(ready, { key: needsKey = true } = {}) {
  const header = document.getElementById("top");
  const main = document.querySelector("main");
  const nav = el("nav");
  header.replaceChildren(el("span", { class: "brand", text: "passerelle" }), nav);
  api("/pages/nav", { key: null })
    .then((data) => {
      for (const page of data.pages) {
        const here = window.location.pathname === page.href;
        nav.append(el("a", { href: page.href, class: here ? "here" : undefined, "aria-current": here ? "page" : undefined, text: page.title }));
      }
    })
    .catch(() => {});
  const keyBox = el("div", { class: "key" });
  header.append(keyBox);
  if (!needsKey) {
    main.hidden = false;
    return ready();
  }
  const wanted = needsKey === true ? QUERY_KEY : needsKey;

  const signedIn = () => {
    keyBox.replaceChildren(
      el("span", { id: "key-status", text: `API key ${keyId()}` }),
      el("button", { type: "button", id: "sign-out", onclick: () => { forgetKey(); window.location.reload(); }, text: "Forget key" }),
    );
    main.hidden = false;
    ready();
  };

  if (apiKey()) {
    const problem = await checkKey(apiKey(), wanted);
    if (!problem) return signedIn();
    forgetKey();
  }
  const input = el("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "key_id.secret", size: 40, "aria-label": "API key" });
  const message = el("span", { class: "error-text", id: "key-error", role: "alert" });
  const form = el(
    "form",
    { id: "key-form" },
    el("label", { for: "api-key", text: wanted.label }),
    input,
    el("button", { type: "submit", text: "Use this key" }),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    message.textContent = "Checking…";
    const problem = await checkKey(key, wanted);
    if (problem) {
      message.textContent = problem;
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    input.value = "";
    signedIn();
  });
  keyBox.replaceChildren(form);
  input.focus();
}
