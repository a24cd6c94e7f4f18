// xretrieve search page: ES modules served as they are (no build step, no third-party code).
//
// This entry point holds the state and wires events to actions. Rules it keeps:
// - one render path: an action changes `state`, then `render()` draws the page from it
//   (controls.js the header, grid.js the results, detail.js the detail view);
// - a new search aborts the request still running for the previous one, and an aborted
//   request is not an error;
// - facet filters go to the server as structured filters (filters.js), never as SQL;
// - errors are shown in one line from the JSON error body, never as a stack trace.

import {
  ApiError, dropToken, getToken, isAbort, listIndexes, mediaUrl, nearestCaptions, searchPage, setToken,
} from "./api.js";
import { readControls, renderControls } from "./controls.js";
import { renderDetail } from "./detail.js";
import { $, basename, oneLine } from "./dom.js";
import { emptyFilters } from "./filters.js";
import { moveFocus, renderGrid } from "./grid.js";
import {
  emptyResults, hasQuery, initialState, makeQuery, pageSize, requestBody, stateFromUrl, textSearchUrl,
  urlSearch,
} from "./state.js";

const CAPTIONS_K = 5;

const state = initialState();
let searching = null;  // the AbortController of the search request in flight
let captioning = null;  // the same for the detail view's nearest captions

const urls = {
  thumbUrl: (path, extra) => mediaUrl(path, state.index, extra),
  fileUrl: (path) => mediaUrl(path, state.index),
  captionHref: (text) => location.pathname + "?" + textSearchUrl(state, text),
  onOpen: (hit) => openDetail(hit),
  onCaption: (text) => searchText(text),
};

function render() {
  renderControls(state);
  renderGrid($("results"), state.results.hits, urls);
  renderDetail(state.detail, urls);
}

// ---- messages ----

function fail(err) {
  if (err instanceof ApiError && err.status === 401) {
    showAuth(getToken() ? "The token was refused; paste the right one:" : null);
    return;
  }
  state.error = oneLine(err && err.message ? err.message : err);
}

function showAuth(label) {
  dropToken();
  state.auth = { label: label || "This server needs a token:" };
  state.status = "";
  state.results.phase = "auth";
  render();
  $("token").focus();
}

// ---- the URL ----

function writeUrl(push) {
  const search = urlSearch(state);
  const target = location.pathname + (search ? "?" + search : "");
  if (target === location.pathname + location.search) return;
  if (push) history.pushState(null, "", target);
  else history.replaceState(null, "", target);
}

// The query, filters and options from the URL (on load and on back/forward).
function readUrl() {
  const u = stateFromUrl(location.search);
  state.query = u.query;
  state.filters = u.filters;
  state.options = u.options;
  if (u.index !== null) state.index = u.index;
  if (u.filtersOpen) state.filtersOpen = true;
}

// Read `?token=` once, keep it for this tab only, and take it out of the address bar.
function takeTokenFromUrl() {
  const p = new URLSearchParams(location.search);
  if (!p.has("token")) return;
  setToken(p.get("token"));
  p.delete("token");
  const rest = p.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
}

// ---- searching ----

async function loadIndexes() {
  const data = await listIndexes();
  state.indexes = Array.isArray(data.indexes) ? data.indexes : [];
  state.limits = data.limits || {};
  const names = state.indexes.map((i) => i.name);
  if (!names.includes(state.index)) state.index = names[0] || null;
}

function abortSearch() {
  if (searching) searching.abort();
  searching = null;
}

function search(push) {
  abortSearch();
  state.results = emptyResults("loading");
  state.results.done = false;
  state.error = null;
  writeUrl(push);
  return loadPage();
}

async function loadPage() {
  const r = state.results;
  if (r.loading || r.done) return;
  if (pageSize(r.offset, state.limits) <= 0) {
    r.done = true;
    r.phase = "done";
    render();
    return;
  }
  const body = requestBody(state, r.offset);
  const controller = new AbortController();
  searching = controller;
  r.loading = true;
  r.phase = "loading";
  state.status = r.offset ? "Loading more\u2026" : "Searching\u2026";
  render();
  let res;
  try {
    res = await searchPage(body, state.query.image, controller.signal);
  } catch (err) {
    if (controller.signal.aborted || isAbort(err) || state.results !== r) return;
    searching = null;
    r.loading = false;
    r.done = true;
    r.phase = "error";
    state.status = r.hits.length ? `${r.hits.length} shown` : "";
    fail(err);
    render();
    return;
  }
  if (state.results !== r) return;
  searching = null;
  const hits = Array.isArray(res.hits) ? res.hits : [];
  const fresh = hits.filter((h) => !r.seen.has(h.id));
  for (const h of fresh) r.seen.add(h.id);
  r.hits = r.hits.concat(fresh);
  r.offset += hits.length;
  r.loading = false;
  if (hits.length < body.k) r.done = true;
  r.filtered = Boolean(body.where || body.filters);
  const shown = r.hits.length;
  const ms = res.timings && Number.isFinite(res.timings.total) ? ` \u00b7 ${Math.round(res.timings.total)} ms` : "";
  state.status = `${shown} result${shown === 1 ? "" : "s"}${r.done ? "" : " so far"}${ms}`;
  r.phase = r.done ? "done" : "more";
  render();
  requestAnimationFrame(maybeLoadMore);
}

// More results while the end of the grid is within reach of the viewport.
function maybeLoadMore() {
  if (state.results.done || state.results.loading) return;
  const rect = $("sentinel").getBoundingClientRect();
  if (rect.top < window.innerHeight + 200) loadPage();
}

function setQuery(q) {
  state.query = makeQuery(q);
}

// After a filter control changed: search again, or keep the URL in step when there is no query.
function rerun() {
  Object.assign(state, readControls());
  if (hasQuery(state.query)) search(true);
  else {
    writeUrl(false);
    render();
  }
}

// ---- the detail view ----

async function openDetail(hit) {
  if (captioning) captioning.abort();
  const controller = new AbortController();
  captioning = controller;
  const detail = { hit, captions: null };
  state.detail = detail;
  render();
  $("d-like").focus();
  const body = { id: hit.id, k: CAPTIONS_K };
  if (state.index) body.index = state.index;
  let captions;
  try {
    const res = await nearestCaptions(body, controller.signal);
    captions = { hits: Array.isArray(res.hits) ? res.hits : [] };
  } catch (err) {
    if (isAbort(err)) return;
    captions = { error: oneLine(err.message) };
  }
  if (state.detail !== detail) return;
  state.detail = { hit, captions };
  render();
}

function closeDetail() {
  if (captioning) captioning.abort();
  captioning = null;
  state.detail = null;
  render();
}

function searchText(text) {
  closeDetail();
  setQuery({ text });
  search(true);
  $("q").focus();
}

function moreLikeThis(hit) {
  closeDetail();
  setQuery({ id: hit.id, label: basename(hit.path) });
  search(true);
}

// ---- image queries ----

function searchImage(file) {
  if (!file) return;
  const max = Number(state.limits.max_upload_bytes);
  if (Number.isFinite(max) && max > 0 && file.size > max) {
    state.error = `the image is ${(file.size / 1048576).toFixed(1)} MiB; this server accepts at most ${(max / 1048576).toFixed(1)} MiB`;
    render();
    return;
  }
  closeDetail();
  setQuery({ image: file });
  search(true);
}

function firstImageFile(list) {
  const files = Array.from(list || []);
  return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
}

function hasFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
}

// ---- start-up and wiring ----

async function start() {
  try {
    await loadIndexes();
  } catch (err) {
    fail(err);
    if (!state.auth) render();
    return;
  }
  if (hasQuery(state.query)) search(false);
  else {
    state.results = emptyResults("idle");
    state.status = "";
    render();
    $("q").focus();
  }
}

function wire() {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("q").value.trim();
    if (text || !state.query.image && !state.query.id) setQuery({ text });
    search(true);
  });
  $("query-chip-clear").addEventListener("click", () => {
    setQuery({ text: "" });
    render();
    $("q").focus();
  });
  $("file").addEventListener("change", (e) => {
    const file = firstImageFile(e.target.files);
    e.target.value = "";
    searchImage(file);
  });
  $("index").addEventListener("change", (e) => {
    state.index = e.target.value;
    if (hasQuery(state.query)) search(true);
    else render();
  });
  for (const id of ["f-folder", "f-year", "f-hybrid", "f-sort", "f-wmin", "f-wmax", "f-hmin", "f-hmax", "f-bmin", "f-bmax", "f-where"]) {
    $(id).addEventListener("change", rerun);
  }
  for (const id of ["f-folder", "f-year", "f-wmin", "f-wmax", "f-hmin", "f-hmax", "f-bmin", "f-bmax", "f-where"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        rerun();
      }
    });
  }
  $("f-clear").addEventListener("click", () => {
    state.filters = emptyFilters();
    render();
    rerun();
  });
  $("filters").addEventListener("toggle", () => {
    state.filtersOpen = $("filters").open;
  });
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    setToken(t);
    state.auth = null;
    state.error = null;
    render();
    start();
  });
  $("d-close").addEventListener("click", closeDetail);
  $("d-like").addEventListener("click", () => state.detail && moreLikeThis(state.detail.hit));
  $("d-bycaption").addEventListener("click", () => {
    if (state.detail && state.detail.hit.caption) searchText(state.detail.hit.caption);
  });
  $("detail").addEventListener("click", (e) => {
    if (e.target === $("detail")) closeDetail();  // a click on the backdrop
  });
  $("detail").addEventListener("close", () => {
    if (state.detail) closeDetail();  // Escape closes the dialog itself
  });
  $("results").addEventListener("keydown", moveFocus);
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (e.key === "/" && !typing && !$("detail").open) {
      e.preventDefault();
      $("q").focus();
      $("q").select();
    }
  });
  // Drag and drop anywhere on the page; the overlay says what a drop will do.
  let depth = 0;
  const dragging = (on) => {
    if (state.dragging === on) return;
    state.dragging = on;
    render();
  };
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    dragging(true);
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) dragging(false);
  });
  document.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  document.addEventListener("drop", (e) => {
    depth = 0;
    dragging(false);
    if (!e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    searchImage(firstImageFile(e.dataTransfer.files));
  });
  document.addEventListener("paste", (e) => {
    const file = firstImageFile(e.clipboardData && e.clipboardData.files);
    if (file && file.type.startsWith("image/")) {
      e.preventDefault();
      searchImage(file);
    }
  });
  window.addEventListener("popstate", () => {
    readUrl();
    if (hasQuery(state.query)) search(false);
    else {
      abortSearch();
      state.results = emptyResults("idle");
      state.status = "";
      render();
    }
  });
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((en) => en.isIntersecting)) loadPage();
    }, { rootMargin: "200px" }).observe($("sentinel"));
  }
  window.addEventListener("scroll", maybeLoadMore, { passive: true });
}

takeTokenFromUrl();
wire();
readUrl();
render();
start();
