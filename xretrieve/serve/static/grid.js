// The results grid, rendered from the hits in the state.
//
// The grid is keyed by the hit objects: when the hits continue what is shown (the next page
// of the same search), only the new cards are added, so loaded thumbnails and the focused
// card stay; any other list (a new search) replaces the grid.

import { basename, el, scoreText } from "./dom.js";

const THUMB_SIZE = 256;
const shown = new WeakMap();  // grid element -> the hits it shows, in order

function card(hit, { thumbUrl, onOpen }) {
  const li = el("li");
  const button = el("button", { type: "button", class: "card", title: hit.path, "data-id": hit.id });
  const img = el("img", {
    src: thumbUrl(hit.thumb || `/api/thumb/${encodeURIComponent(hit.id)}`, { size: THUMB_SIZE }),
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
  meta.append(
    el("span", { class: "score" }, scoreText(hit.score)),
    el("span", { class: "caption" }, hit.caption || basename(hit.path)),
  );
  button.append(img, meta);
  button.addEventListener("click", () => onOpen(hit));
  li.append(button);
  return li;
}

// Show `hits` in the grid `list` (`thumbUrl(path, extra)` gives image URLs, `onOpen(hit)`
// opens one).
export function renderGrid(list, hits, handlers) {
  const before = shown.get(list) || [];
  const continues =
    before.length <= hits.length &&
    list.children.length === before.length &&
    before.every((h, i) => hits[i] === h);
  if (continues && before.length === hits.length) return;
  if (continues) list.append(...hits.slice(before.length).map((h) => card(h, handlers)));
  else list.replaceChildren(...hits.map((h) => card(h, handlers)));
  shown.set(list, hits.slice());
}

// Arrow keys move between cards, row by row.
export function moveFocus(event) {
  const cards = Array.from(event.currentTarget.querySelectorAll(".card"));
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
