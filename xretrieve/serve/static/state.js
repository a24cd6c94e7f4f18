// The page's state, the URL that holds it, and the search request it makes. Pure: no DOM at
// all (Node's tests import it), so every function takes what it reads.
//
// The URL holds the query and its options (shareable, reloadable); an uploaded image cannot
// live in a URL, so an image search keeps only the options there. A value left at its
// default stays out of the URL.

import { FILTER_FIELDS, emptyFilters, freeWhere, toFilters } from "./filters.js";

// Hits asked for per page: the page always sends its own `k`.
export const PAGE = 24;
// The fields a number box holds; the URL keeps them only when they read as a number, as a
// number box would.
const NUMBER_FIELDS = new Set(["wmin", "wmax", "hmin", "hmax", "bmin", "bmax"]);
const NUMBER = /^-?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?$/;

// Results before any search: `phase` is what the grid's data-state says ("" for nothing yet;
// idle, loading, more, done, error, auth).
export function emptyResults(phase = "") {
  return { phase, hits: [], seen: new Set(), offset: 0, done: true, loading: false, filtered: false };
}

export function initialState() {
  return {
    indexes: [],
    index: null,
    limits: {},
    // At most one of text / id / image drives a search.
    query: makeQuery({}),
    filters: emptyFilters(),
    options: { hybrid: false, sort: "score" },
    filtersOpen: false,
    results: emptyResults(),
    status: "",
    error: null,
    auth: null,
    detail: null,
    dragging: false,
  };
}

export function makeQuery(q) {
  return { text: q.text || "", id: q.id || null, label: q.label || "", image: q.image || null };
}

export function hasQuery(query) {
  return Boolean(query.text || query.id || query.image);
}

// What a URL's query string (`location.search`) says: the query, filters and options, the
// index (null when it names none) and whether the filters should show.
export function stateFromUrl(search) {
  const p = new URLSearchParams(search);
  const filters = emptyFilters();
  for (const field of FILTER_FIELDS) {
    const v = p.get(field);
    if (field === "folder") filters.folder = v;
    else if (v !== null && (!NUMBER_FIELDS.has(field) || NUMBER.test(v))) filters[field] = v;
  }
  const id = p.get("id");
  return {
    query: makeQuery(id ? { id, label: id } : { text: p.get("q") || "" }),
    filters,
    options: { hybrid: p.get("hybrid") === "1", sort: p.get("sort") === "mtime" ? "mtime" : "score" },
    index: p.get("index"),
    filtersOpen: FILTER_FIELDS.some((k) => p.has(k)),
  };
}

// The URL's query string (without "?") for a state; defaults are left out.
export function urlSearch(state) {
  const p = new URLSearchParams();
  const q = state.query;
  if (q.id) p.set("id", q.id);
  else if (!q.image && q.text) p.set("q", q.text);
  if (state.index && state.indexes.length > 1) p.set("index", state.index);
  const f = state.filters;
  for (const field of FILTER_FIELDS) {
    const v = f[field];
    if (field === "folder" ? v !== null && v !== undefined : String(v ?? "").trim() !== "") {
      p.set(field, v);
    }
  }
  if (state.options.hybrid) p.set("hybrid", "1");
  if (state.options.sort !== "score") p.set("sort", state.options.sort);
  return p.toString();
}

// The query string of a plain text search on the same index (the detail view's links).
export function textSearchUrl(state, text) {
  return urlSearch({
    query: makeQuery({ text }),
    index: state.index,
    indexes: state.indexes,
    filters: emptyFilters(),
    options: { hybrid: false, sort: "score" },
  });
}

// A page of `PAGE`, cut where the server's `max_k` (offset + k) ends.
export function pageSize(offset, limits) {
  const max = Number((limits || {}).max_k);
  return Number.isFinite(max) && max > 0 ? Math.min(PAGE, max - offset) : PAGE;
}

// The JSON body of POST /api/search for the page that starts at `offset`.
export function requestBody(state, offset) {
  const q = state.query;
  const text = q.id || q.image ? null : q.text;
  const filters = toFilters(state.filters);
  const body = {
    modality: "image",
    k: pageSize(offset, state.limits),
    offset,
    text,
    id: q.id,
    hybrid: state.options.hybrid && Boolean(text),
    sort: state.options.sort,
    where: freeWhere(state.filters),
  };
  if (filters.length) body.filters = filters;
  if (state.index) body.index = state.index;
  return body;
}
