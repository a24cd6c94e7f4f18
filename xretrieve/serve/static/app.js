// xretrieve search page: vanilla JS, no build step, no third-party code.
//
// Rules this file keeps:
// - everything that comes from the user or the index (captions, paths, metadata, error
//   messages) reaches the page through textContent / setAttribute, never innerHTML;
// - the URL holds the query and its options (shareable, reloadable); an uploaded image
//   cannot live in a URL, so an image search keeps only the options there;
// - errors are shown in one line from the JSON error body, never as a stack trace;
// - a token, when the server asks for one (401), lives in sessionStorage only.
"use strict";

(() => {
  const TOKEN_KEY = "xretrieve.token";
  const PAGE = 24;
  const THUMB_SIZE = 256;
  const CAPTIONS_K = 5;
  // Filters kept in the URL, by URL parameter -> control id.
  const FILTER_PARAMS = {
    folder: "f-folder", year: "f-year", wmin: "f-wmin", wmax: "f-wmax", hmin: "f-hmin",
    hmax: "f-hmax", bmin: "f-bmin", bmax: "f-bmax", where: "f-where",
  };
  const RANGES = [["width", "wmin", "wmax"], ["height", "hmin", "hmax"], ["bytes", "bmin", "bmax"]];

  const $ = (id) => document.getElementById(id);

  const state = {
    indexes: [],
    index: null,
    limits: {},
    // At most one of text / id / image drives a search.
    query: { text: "", id: null, label: "", image: null },
    offset: 0,
    done: true,
    loading: false,
    seq: 0,
    detailSeq: 0,
    seen: new Set(),
    current: null,
  };

  class ApiError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  // ---- small DOM helpers (text only) ----

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function oneLine(message) {
    const line = String(message ?? "").split(/\r?\n/, 1)[0].trim();
    return line.length > 300 ? line.slice(0, 299) + "\u2026" : line;
  }

  function basename(path) {
    const parts = String(path || "").split("/");
    return parts[parts.length - 1] || String(path || "");
  }

  // ---- API ----

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path, options) {
    const { json, form } = options || {};
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let res;
    try {
      res = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body });
    } catch (e) {
      throw new ApiError(0, "NetworkError", "cannot reach the server");
    }
    if (res.ok) return res.json();
    let type = "HTTPError";
    let message = `HTTP ${res.status} ${res.statusText || ""}`.trim();
    try {
      const data = await res.json();
      if (data && data.error && typeof data.error === "object") {
        type = data.error.type || type;
        message = data.error.message || message;
      } else if (data && typeof data.detail === "string") {
        message = data.detail;
      } else if (data && Array.isArray(data.detail) && data.detail.length) {
        message = String(data.detail[0].msg || message);
      }
    } catch (e) {
      // Not JSON (a proxy's page, say): the status line is the message.
    }
    throw new ApiError(res.status, type, oneLine(message));
  }

  // A thumbnail / file URL: the index and, for <img> which cannot send headers, the token.
  function mediaUrl(path, extra) {
    const url = new URL(path, location.origin);
    if (state.index) url.searchParams.set("index", state.index);
    for (const [k, v] of Object.entries(extra || {})) url.searchParams.set(k, String(v));
    const t = token();
    if (t) url.searchParams.set("token", t);
    return url.pathname + url.search;
  }

  // ---- messages ----

  function showError(err) {
    if (err instanceof ApiError && err.status === 401) {
      showAuth(token() ? "The token was refused; paste the right one:" : null);
      return;
    }
    const box = $("error");
    box.textContent = oneLine(err && err.message ? err.message : err);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showAuth(label) {
    sessionStorage.removeItem(TOKEN_KEY);
    const form = $("auth");
    form.querySelector("label").textContent = label || "This server needs a token:";
    form.hidden = false;
    $("token").value = "";
    $("token").focus();
    setStatus("");
    $("results").dataset.state = "auth";
  }

  // ---- filters and the URL ----

  function sqlString(s) {
    return "'" + String(s).replace(/'/g, "''") + "'";
  }

  function intOrNull(value) {
    if (String(value).trim() === "") return null;
    const n = Number(value);
    return Number.isFinite(n) ? Math.trunc(n) : null;
  }

  function filterValues() {
    const out = {};
    for (const [param, id] of Object.entries(FILTER_PARAMS)) out[param] = $(id).value;
    return out;
  }

  // The WHERE sent to the server: facet choices AND the free WHERE box.
  function buildWhere() {
    const f = filterValues();
    const parts = [];
    if ($("f-folder").selectedIndex > 0) parts.push(`folder = ${sqlString(f.folder)}`);
    const year = intOrNull(f.year);
    if (year !== null) parts.push(`year = ${year}`);
    for (const [col, lo, hi] of RANGES) {
      const a = intOrNull(f[lo]);
      const b = intOrNull(f[hi]);
      if (a !== null) parts.push(`${col} >= ${a}`);
      if (b !== null) parts.push(`${col} <= ${b}`);
    }
    const free = f.where.trim();
    if (free) parts.push(parts.length ? `(${free})` : free);
    return parts.length ? parts.join(" AND ") : null;
  }

  function urlParams() {
    const p = new URLSearchParams();
    const q = state.query;
    if (q.id) p.set("id", q.id);
    else if (!q.image && q.text) p.set("q", q.text);
    if (state.index && state.indexes.length > 1) p.set("index", state.index);
    const f = filterValues();
    for (const param of Object.keys(FILTER_PARAMS)) {
      if (param === "folder" ? $("f-folder").selectedIndex > 0 : f[param].trim() !== "") {
        p.set(param, f[param]);
      }
    }
    if ($("f-hybrid").checked) p.set("hybrid", "1");
    if ($("f-sort").value !== "score") p.set("sort", $("f-sort").value);
    return p;
  }

  function writeUrl(push) {
    const search = urlParams().toString();
    const target = location.pathname + (search ? "?" + search : "");
    if (target === location.pathname + location.search) return;
    if (push) history.pushState(null, "", target);
    else history.replaceState(null, "", target);
  }

  // Controls and query from the URL (on load and on back/forward).
  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const [param, id] of Object.entries(FILTER_PARAMS)) {
      const v = p.get(param) ?? "";
      const node = $(id);
      if (node.tagName === "SELECT") selectValue(node, v, param === "folder" && p.has(param));
      else node.value = v;
    }
    $("f-hybrid").checked = p.get("hybrid") === "1";
    $("f-sort").value = p.get("sort") === "mtime" ? "mtime" : "score";
    if (p.has("index")) state.index = p.get("index");
    const id = p.get("id");
    setQuery(id ? { id, label: id } : { text: p.get("q") || "" });
    if (Object.keys(FILTER_PARAMS).some((k) => p.has(k))) $("filters").open = true;
  }

  // Select `value` in a <select>, adding it as an option when the facets do not list it yet.
  function selectValue(select, value, present) {
    if (!present && value === "") {
      select.selectedIndex = 0;
      return;
    }
    for (let i = 1; i < select.options.length; i++) {
      if (select.options[i].value === value) {
        select.selectedIndex = i;
        return;
      }
    }
    select.append(el("option", { value }, value === "" ? "(top level)" : value));
    select.selectedIndex = select.options.length - 1;
  }

  function fillSelect(select, values, label) {
    const chosen = select.selectedIndex > 0 ? select.value : null;
    while (select.options.length > 1) select.remove(1);
    for (const v of values || []) select.append(el("option", { value: String(v) }, label(v)));
    if (chosen !== null) selectValue(select, chosen, true);
  }

  function applyFacets() {
    const info = state.indexes.find((i) => i.name === state.index) || {};
    const facets = info.facets || {};
    fillSelect($("f-folder"), facets.folder, (v) => (v === "" ? "(top level)" : String(v)));
    fillSelect($("f-year"), facets.year, String);
    for (const [col, lo, hi] of RANGES) {
      const range = facets[col];
      const ok = Array.isArray(range) && range.length === 2;
      $(FILTER_PARAMS[lo]).placeholder = ok ? `min ${range[0]}` : "min";
      $(FILTER_PARAMS[hi]).placeholder = ok ? `max ${range[1]}` : "max";
    }
  }

  async function loadIndexes() {
    const data = await api("/api/indexes");
    state.indexes = Array.isArray(data.indexes) ? data.indexes : [];
    state.limits = data.limits || {};
    const names = state.indexes.map((i) => i.name);
    if (!names.includes(state.index)) state.index = names[0] || null;
    const select = $("index");
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (state.index) select.value = state.index;
    $("index-picker").hidden = names.length < 2;
    applyFacets();
  }

  // ---- the query ----

  function setQuery(q) {
    state.query = { text: q.text || "", id: q.id || null, label: q.label || "", image: q.image || null };
    const chip = $("query-chip");
    if (state.query.image || state.query.id) {
      $("query-chip-text").textContent = state.query.image
        ? "image: " + (state.query.image.name || "pasted image")
        : "like: " + state.query.label;
      chip.hidden = false;
      $("q").value = "";
    } else {
      chip.hidden = true;
      $("query-chip-text").textContent = "";
      $("q").value = state.query.text;
    }
  }

  function hasQuery() {
    const q = state.query;
    return Boolean(q.text || q.id || q.image);
  }

  // A page of `PAGE`, cut where the server's `max_k` (offset + k) ends.
  function pageSize(offset) {
    const max = Number(state.limits.max_k);
    return Number.isFinite(max) && max > 0 ? Math.min(PAGE, max - offset) : PAGE;
  }

  function requestBody(offset) {
    const q = state.query;
    const text = q.id || q.image ? null : q.text;
    const body = {
      modality: "image",
      k: pageSize(offset),
      offset,
      text,
      id: q.id,
      hybrid: $("f-hybrid").checked && Boolean(text),
      sort: $("f-sort").value,
      where: buildWhere(),
    };
    if (state.index) body.index = state.index;
    return body;
  }

  function search(push) {
    state.seq += 1;
    state.offset = 0;
    state.done = false;
    state.loading = false;
    state.seen.clear();
    $("results").replaceChildren();
    $("empty").hidden = true;
    $("hint").hidden = true;
    clearError();
    writeUrl(push);
    return loadPage();
  }

  async function loadPage() {
    if (state.loading || state.done) return;
    if (pageSize(state.offset) <= 0) {
      state.done = true;
      return;
    }
    const seq = state.seq;
    const body = requestBody(state.offset);
    const image = state.query.image;
    const grid = $("results");
    state.loading = true;
    grid.dataset.state = "loading";
    setStatus(state.offset ? "Loading more\u2026" : "Searching\u2026");
    let res;
    try {
      if (image) {
        const form = new FormData();
        form.append("q", JSON.stringify(body));
        form.append("image", image, image.name || "image");
        res = await api("/api/search", { form });
      } else {
        res = await api("/api/search", { json: body });
      }
    } catch (err) {
      if (seq !== state.seq) return;
      state.loading = false;
      state.done = true;
      grid.dataset.state = "error";
      setStatus(grid.children.length ? `${grid.children.length} shown` : "");
      showError(err);
      return;
    }
    if (seq !== state.seq) return;
    const hits = Array.isArray(res.hits) ? res.hits : [];
    for (const hit of hits) {
      if (state.seen.has(hit.id)) continue;
      state.seen.add(hit.id);
      grid.append(card(hit));
    }
    state.offset += hits.length;
    state.loading = false;
    if (hits.length < body.k) state.done = true;
    const shown = grid.children.length;
    $("empty").hidden = shown > 0;
    if (!shown) $("empty").textContent = body.where ? "No results with these filters." : "No results.";
    const ms = res.timings && Number.isFinite(res.timings.total) ? ` \u00b7 ${Math.round(res.timings.total)} ms` : "";
    setStatus(`${shown} result${shown === 1 ? "" : "s"}${state.done ? "" : " so far"}${ms}`);
    grid.dataset.state = state.done ? "done" : "more";
    requestAnimationFrame(maybeLoadMore);
  }

  // More results while the end of the grid is within reach of the viewport.
  function maybeLoadMore() {
    if (state.done || state.loading) return;
    const rect = $("sentinel").getBoundingClientRect();
    if (rect.top < window.innerHeight + 200) loadPage();
  }

  // ---- results ----

  function card(hit) {
    const li = el("li");
    const button = el("button", { type: "button", class: "card", title: hit.path, "data-id": hit.id });
    const img = el("img", {
      src: mediaUrl(hit.thumb || `/api/thumb/${encodeURIComponent(hit.id)}`, { size: THUMB_SIZE }),
      alt: hit.caption || basename(hit.path),
      loading: "lazy",
      decoding: "async",
      width: 180,
      height: 180,
    });
    img.addEventListener("load", () => {
      if (img.naturalWidth < 128) img.classList.add("pixelated");
    });
    img.addEventListener("error", () => button.classList.add("broken"));
    const meta = el("span", { class: "meta" });
    const score = Number(hit.score);
    meta.append(
      el("span", { class: "score" }, Number.isFinite(score) ? score.toFixed(3) : ""),
      el("span", { class: "caption" }, hit.caption || basename(hit.path)),
    );
    button.append(img, meta);
    button.addEventListener("click", () => openDetail(hit));
    li.append(button);
    return li;
  }

  // Arrow keys move between cards, row by row.
  function moveFocus(event) {
    const cards = Array.from(document.querySelectorAll("#results .card"));
    const i = cards.indexOf(document.activeElement);
    if (i < 0) return;
    const top = cards[0].offsetTop;
    let cols = cards.findIndex((c) => c.offsetTop !== top);
    if (cols <= 0) cols = cards.length;
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols }[event.key];
    if (step === undefined) return;
    const next = cards[Math.min(cards.length - 1, Math.max(0, i + step))];
    event.preventDefault();
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  }

  // ---- detail view ----

  function metaValue(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  async function openDetail(hit) {
    state.current = hit;
    const seq = ++state.detailSeq;
    const title = $("d-title");
    title.textContent = basename(hit.path);
    title.setAttribute("title", hit.path);
    const img = $("d-image");
    img.classList.remove("pixelated");
    img.onload = () => img.classList.toggle("pixelated", img.naturalWidth < 256);
    img.src = mediaUrl(hit.file || `/api/file/${encodeURIComponent(hit.id)}`);
    img.alt = hit.caption || basename(hit.path);
    $("d-open").href = img.getAttribute("src");
    $("d-caption").textContent = hit.caption || "(no caption)";
    $("d-bycaption").disabled = !hit.caption;
    const dl = $("d-meta");
    dl.replaceChildren();
    const rows = [["path", hit.path], ["id", hit.id], ["score", hit.score]];
    const components = Object.entries(hit.components || {});
    if (components.length > 1) for (const [k, v] of components) rows.push([`${k} score`, v]);
    for (const [k, v] of Object.entries(hit.metadata || {})) {
      if (k !== "path" && k !== "caption" && v !== null && v !== undefined && v !== "") rows.push([k, v]);
    }
    for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, metaValue(v)));
    const list = $("d-captions");
    list.replaceChildren(el("li", { class: "muted" }, "Loading\u2026"));
    const dialog = $("detail");
    if (!dialog.open) dialog.showModal();
    $("d-like").focus();
    const body = { id: hit.id, k: CAPTIONS_K };
    if (state.index) body.index = state.index;
    let res;
    try {
      res = await api("/api/caption", { json: body });
    } catch (err) {
      if (seq === state.detailSeq) list.replaceChildren(el("li", { class: "muted" }, oneLine(err.message)));
      return;
    }
    if (seq !== state.detailSeq) return;
    const hits = Array.isArray(res.hits) ? res.hits : [];
    if (!hits.length) {
      list.replaceChildren(el("li", { class: "muted" }, "No captions in this index."));
      return;
    }
    list.replaceChildren(
      ...hits.map((h) => {
        const text = h.caption || basename(h.path);
        // A real link to that search (it opens in a new tab too); a plain click stays here.
        const a = el("a", { href: captionHref(text), title: "Search by this caption" }, text);
        a.addEventListener("click", (e) => {
          if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
          e.preventDefault();
          searchText(text);
        });
        const li = el("li");
        const score = Number(h.score);
        li.append(a, el("span", { class: "score" }, Number.isFinite(score) ? score.toFixed(3) : ""));
        return li;
      }),
    );
  }

  function captionHref(text) {
    const p = new URLSearchParams();
    p.set("q", text);
    if (state.index && state.indexes.length > 1) p.set("index", state.index);
    return location.pathname + "?" + p.toString();
  }

  function closeDetail() {
    state.detailSeq += 1;
    const dialog = $("detail");
    if (dialog.open) dialog.close();
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
      clearError();
      showError(`the image is ${(file.size / 1048576).toFixed(1)} MiB; this server accepts at most ${(max / 1048576).toFixed(1)} MiB`);
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

  // Read `?token=` once, keep it for this tab only, and take it out of the address bar.
  function takeTokenFromUrl() {
    const p = new URLSearchParams(location.search);
    if (!p.has("token")) return;
    sessionStorage.setItem(TOKEN_KEY, p.get("token"));
    p.delete("token");
    const rest = p.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }

  async function start() {
    try {
      await loadIndexes();
    } catch (err) {
      showError(err);
      return;
    }
    if (hasQuery()) search(false);
    else {
      $("results").dataset.state = "idle";
      $("hint").hidden = false;
      setStatus("");
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
      $("q").focus();
    });
    $("file").addEventListener("change", (e) => {
      const file = firstImageFile(e.target.files);
      e.target.value = "";
      searchImage(file);
    });
    $("index").addEventListener("change", (e) => {
      state.index = e.target.value;
      applyFacets();
      if (hasQuery()) search(true);
    });
    const rerun = () => {
      if (hasQuery()) search(true);
      else writeUrl(false);
    };
    for (const id of ["f-folder", "f-year", "f-hybrid", "f-sort", "f-wmin", "f-wmax", "f-hmin", "f-hmax", "f-bmin", "f-bmax"]) {
      $(id).addEventListener("change", rerun);
    }
    for (const id of Object.values(FILTER_PARAMS)) {
      $(id).addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          rerun();
        }
      });
    }
    $("f-where").addEventListener("change", rerun);
    $("f-clear").addEventListener("click", () => {
      for (const id of Object.values(FILTER_PARAMS)) {
        const node = $(id);
        if (node.tagName === "SELECT") node.selectedIndex = 0;
        else node.value = "";
      }
      rerun();
    });
    $("auth").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("auth").hidden = true;
      clearError();
      start();
    });
    $("d-close").addEventListener("click", closeDetail);
    $("d-like").addEventListener("click", () => state.current && moreLikeThis(state.current));
    $("d-bycaption").addEventListener("click", () => {
      if (state.current && state.current.caption) searchText(state.current.caption);
    });
    $("detail").addEventListener("click", (e) => {
      if (e.target === $("detail")) closeDetail();  // a click on the backdrop
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
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      depth += 1;
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) document.body.classList.remove("dragging");
    });
    document.addEventListener("dragover", (e) => {
      if (hasFiles(e)) e.preventDefault();
    });
    document.addEventListener("drop", (e) => {
      depth = 0;
      document.body.classList.remove("dragging");
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
      applyFacets();
      if (hasQuery()) search(false);
      else {
        state.seq += 1;
        $("results").replaceChildren();
        $("empty").hidden = true;
        $("hint").hidden = false;
        setStatus("");
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
  start();
})();
