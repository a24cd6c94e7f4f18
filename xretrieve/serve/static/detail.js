// The detail view, rendered from `state.detail`: one item's image, caption, metadata and
// nearest captions, in a modal <dialog>; null closes it.
//
// `detail` is `{hit, captions}`, where captions is null while they load, `{error}` or
// `{hits}`. The dialog's parts are rebuilt only when that object changes, so a render for
// something else leaves the open view (and its loaded image) alone.

import { $, basename, el, metaValue, scoreText } from "./dom.js";

let drawn = null;  // the detail object the dialog shows

function fillItem(hit, { fileUrl }) {
  const title = $("d-title");
  title.textContent = basename(hit.path);
  title.setAttribute("title", hit.path);
  const img = $("d-image");
  img.classList.remove("pixelated");
  img.onload = () => img.classList.toggle("pixelated", img.naturalWidth < 256);
  img.src = fileUrl(hit.file || `/api/file/${encodeURIComponent(hit.id)}`);
  img.alt = hit.caption || basename(hit.path);
  $("d-open").href = img.getAttribute("src");
  $("d-caption").textContent = hit.caption || "(no caption)";
  $("d-bycaption").disabled = !hit.caption;
  const rows = [["path", hit.path], ["id", hit.id], ["score", hit.score]];
  const components = Object.entries(hit.components || {});
  if (components.length > 1) for (const [k, v] of components) rows.push([`${k} score`, v]);
  for (const [k, v] of Object.entries(hit.metadata || {})) {
    if (k !== "path" && k !== "caption" && v !== null && v !== undefined && v !== "") rows.push([k, v]);
  }
  $("d-meta").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, metaValue(v))]));
}

function muted(text) {
  return el("li", { class: "muted" }, text);
}

function fillCaptions(captions, { captionHref, onCaption }) {
  const list = $("d-captions");
  if (captions === null) return list.replaceChildren(muted("Loading\u2026"));
  if (captions.error) return list.replaceChildren(muted(captions.error));
  if (!captions.hits.length) return list.replaceChildren(muted("No captions in this index."));
  list.replaceChildren(
    ...captions.hits.map((h) => {
      const text = h.caption || basename(h.path);
      // A real link to that search (it opens in a new tab too); a plain click stays here.
      const a = el("a", { href: captionHref(text), title: "Search by this caption" }, text);
      a.addEventListener("click", (e) => {
        if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
        e.preventDefault();
        onCaption(text);
      });
      const li = el("li");
      li.append(a, el("span", { class: "score" }, scoreText(h.score)));
      return li;
    }),
  );
}

// Show `detail` (or close the view when it is null). `fileUrl(path)` gives the image's URL,
// `captionHref(text)` a caption's search link and `onCaption(text)` runs that search.
export function renderDetail(detail, handlers) {
  const dialog = $("detail");
  if (detail === null) {
    drawn = null;
    if (dialog.open) dialog.close();
    return;
  }
  if (detail !== drawn) {
    if (!drawn || drawn.hit !== detail.hit) fillItem(detail.hit, handlers);
    if (!drawn || drawn.captions !== detail.captions) fillCaptions(detail.captions, handlers);
    drawn = detail;
  }
  if (!dialog.open) dialog.showModal();
}
