// The search bar, the filter controls and the messages, rendered from the state; and the
// filter controls read back into it when the user changes one.
//
// A control the user types in is written only when the state's object for it changes (a new
// query, filters from the URL, "Clear filters"), never on a render for something else, so a
// page of results arriving never overwrites what is being typed.

import { $, el } from "./dom.js";
import { RANGES } from "./filters.js";

// Filter field -> the id of its control.
export const FILTER_CONTROLS = {
  folder: "f-folder", year: "f-year", wmin: "f-wmin", wmax: "f-wmax", hmin: "f-hmin",
  hmax: "f-hmax", bmin: "f-bmin", bmax: "f-bmax", where: "f-where",
};
const TOP_LEVEL = "(top level)";
const optionKeys = new WeakMap();  // <select> -> the option list it was built from
const written = { query: null, filters: null, options: null, auth: null, filtersOpen: undefined };

function show(id, visible) {
  const node = $(id);
  if (node.hidden === visible) node.hidden = !visible;
}

function text(id, value) {
  const node = $(id);
  if (node.textContent !== value) node.textContent = value;
}

// A <select> whose first option is "any": `values` [value, label] after it, and `chosen`
// selected (null: "any"), added when the list lacks it. Rebuilt only when the list changes.
function renderSelect(select, values, chosen, force) {
  const list = values.slice();
  if (chosen !== null && !list.some(([v]) => v === chosen)) {
    list.push([chosen, chosen === "" ? TOP_LEVEL : chosen]);
  }
  const key = JSON.stringify(list);
  const rebuilt = optionKeys.get(select) !== key;
  if (rebuilt) {
    while (select.options.length > 1) select.remove(1);
    for (const [v, label] of list) select.append(el("option", { value: v }, label));
    optionKeys.set(select, key);
  }
  if (rebuilt || force) {
    const i = chosen === null ? -1 : list.findIndex(([v]) => v === chosen);
    select.selectedIndex = i + 1;
  }
}

function facetsOf(state) {
  const info = state.indexes.find((i) => i.name === state.index) || {};
  return info.facets || {};
}

function renderIndexPicker(state) {
  const names = state.indexes.map((i) => i.name);
  const select = $("index");
  const key = JSON.stringify(names);
  if (optionKeys.get(select) !== key) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    optionKeys.set(select, key);
  }
  if (state.index && select.value !== state.index) select.value = state.index;
  show("index-picker", names.length >= 2);
}

function renderQuery(state) {
  const q = state.query;
  const chip = Boolean(q.image || q.id);
  show("query-chip", chip);
  text("query-chip-text", chip ? (q.image ? "image: " + (q.image.name || "pasted image") : "like: " + q.label) : "");
  if (written.query !== q) {
    $("q").value = chip ? "" : q.text;
    written.query = q;
  }
}

function renderFilters(state) {
  const f = state.filters;
  const force = written.filters !== f;
  const facets = facetsOf(state);
  const folders = (facets.folder || []).map((v) => [String(v), v === "" ? TOP_LEVEL : String(v)]);
  renderSelect($("f-folder"), folders, f.folder ?? null, force);
  const years = (facets.year || []).map((v) => [String(v), String(v)]);
  renderSelect($("f-year"), years, f.year === "" ? null : f.year, force);
  for (const [col, lo, hi] of RANGES) {
    const range = facets[col];
    const ok = Array.isArray(range) && range.length === 2;
    $(FILTER_CONTROLS[lo]).placeholder = ok ? `min ${range[0]}` : "min";
    $(FILTER_CONTROLS[hi]).placeholder = ok ? `max ${range[1]}` : "max";
  }
  if (force) {
    for (const [field, id] of Object.entries(FILTER_CONTROLS)) {
      if (field !== "folder" && field !== "year") $(id).value = f[field];
    }
    written.filters = f;
  }
  if (written.options !== state.options) {
    $("f-hybrid").checked = state.options.hybrid;
    $("f-sort").value = state.options.sort;
    written.options = state.options;
  }
  if (written.filtersOpen !== state.filtersOpen) {
    $("filters").open = state.filtersOpen;
    written.filtersOpen = state.filtersOpen;
  }
}

function renderMessages(state) {
  const auth = $("auth");
  if (written.auth !== state.auth) {
    if (state.auth) {
      auth.querySelector("label").textContent = state.auth.label;
      $("token").value = "";
    }
    written.auth = state.auth;
  }
  show("auth", Boolean(state.auth));
  show("error", state.error !== null);
  text("error", state.error ?? "");
  text("status", state.status);
  const r = state.results;
  const list = $("results");
  if (r.phase && list.dataset.state !== r.phase) list.dataset.state = r.phase;
  const settled = r.phase === "done" || r.phase === "more";
  show("empty", settled && r.hits.length === 0);
  if (settled && !r.hits.length) text("empty", r.filtered ? "No results with these filters." : "No results.");
  show("hint", r.phase === "idle");
  document.body.classList.toggle("dragging", state.dragging);
}

// Render the header (search bar, filters, messages) from the state.
export function renderControls(state) {
  renderIndexPicker(state);
  renderQuery(state);
  renderFilters(state);
  renderMessages(state);
}

// The filter controls' values, as the state's `filters` and `options`.
export function readControls() {
  const filters = {};
  for (const [field, id] of Object.entries(FILTER_CONTROLS)) filters[field] = $(id).value;
  const folder = $("f-folder");
  filters.folder = folder.selectedIndex > 0 ? folder.value : null;
  filters.year = $("f-year").selectedIndex > 0 ? $("f-year").value : "";
  return { filters, options: { hybrid: $("f-hybrid").checked, sort: $("f-sort").value } };
}
