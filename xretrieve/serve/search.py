"""Running an API search on one generation: the query terms, the query layer, paging, hits.

Rules kept here:

- Every search goes through the query layer (`Index.search`, `search_vector`, `caption`
  with `SearchOptions`); the service adds only what HTTP needs: ids, paging, date order,
  a score floor and JSON-safe rows.
- An item named by id is searched with its stored vector, never re-encoded; mixed with
  text or an uploaded image, the terms compose as the library composes them
  (`scoring.compose`: weights in the order text, image, id, audio_id).
- Paging searches `offset + k` and slices, so pages of one search concatenate to the
  unpaged list (for any ranking whose top `n` is a prefix of its top `n + m`: dense
  search over exact shards, as the API tests check). `sort=mtime` orders the best `max_k`
  matches by date, newest first, the same pool for every page.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image

from xretrieve import store
from xretrieve.errors import InputError
from xretrieve.query import Hit, Hits, SearchOptions, scoring
from xretrieve.query.options import OPTION_NAMES
from xretrieve.serve.catalog import Generation, ItemRef
from xretrieve.serve.config import ServeConfig
from xretrieve.serve.errors import NotFound
from xretrieve.serve.filters import combine, filters_where
from xretrieve.serve.ids import item_id
from xretrieve.serve.models import CaptionRequest, SearchRequest

__all__ = ["find_item", "item_json", "json_metadata", "run_caption", "run_search"]

# Internal columns a client has no use for (ids replace shard and row).
_HIDDEN = frozenset({"shard", "row", "path_bytes"})
# The columns a structured filter may name: those a typed WHERE may read.
_COLUMNS = frozenset(store.METADATA_SCHEMA.names)


def json_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A metadata row as JSON values: dates in ISO 8601, no NaN, no bytes."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k in _HIDDEN:
            continue
        if isinstance(v, datetime):
            v = v.isoformat()
        elif (isinstance(v, float) and not math.isfinite(v)) or isinstance(v, bytes):
            v = None
        out[k] = v
    return out


def item_json(meta: dict[str, Any]) -> dict[str, Any]:
    """What the API says of one item (its id, path, caption, metadata and URLs)."""
    iid = item_id(meta["path"], meta.get("content_hash"))
    return {
        "id": iid,
        "path": meta["path"],
        "modality": meta["modality"],
        "caption": meta.get("caption"),
        "metadata": json_metadata(meta),
        "thumb": f"/api/thumb/{iid}",
        "file": f"/api/file/{iid}",
    }


def find_item(gen: Generation, item: str) -> ItemRef:
    """The item with this id in the generation, or `NotFound`."""
    ref = gen.find(item)
    if ref is None:
        shown = item if len(item) <= 40 else item[:40] + "…"
        raise NotFound(f"no item with id {shown!r} in index {gen.name!r}")
    return ref


def _hit_json(h: Hit, rank: int) -> dict[str, Any]:
    return {
        **item_json(h.metadata),
        "rank": rank,
        "score": float(h.score),
        "components": dict(h.components) or {"dense": float(h.score)},
    }


def _options(req: SearchRequest, k: int) -> SearchOptions:
    """The request's search options (every `SearchOptions` field is a request field)."""
    given = {name: getattr(req, name) for name in OPTION_NAMES}
    where = combine(filters_where(req.filters, columns=_COLUMNS), req.where)
    return SearchOptions(**{**given, "k": k, "where": where})


def _search(gen: Generation, req: SearchRequest, image: Image.Image | None, k: int) -> Hits:
    """The library search for the request's terms, `k` hits."""
    opts = _options(req, k)
    stored = [find_item(gen, i).vector() for i in (req.id, req.audio_id) if i is not None]
    text = (
        req.text if req.text is not None and (req.text.strip() or not (stored or image)) else None
    )
    if not stored:
        return gen.index.search(
            text, image=image, negative=req.negative, weights=req.weights, options=opts
        )
    t0 = time.perf_counter()
    positive = [gen.index.embed_text(text)] if text is not None else []
    if image is not None:
        positive.append(gen.index.embed_image(image))
    negative = [gen.index.embed_text(t) for t in req.negative or []]
    q = scoring.compose(
        np.vstack([*positive, *stored]),
        np.vstack(negative) if negative else None,
        weights=req.weights,
    )
    encode_ms = (time.perf_counter() - t0) * 1000.0
    hits = gen.index.search_vector(q, text=text, options=opts)
    hits.timings["encode"] = encode_ms
    hits.timings["total"] = hits.timings.get("total", 0.0) + encode_ms
    return hits


def _page(gen: Generation, hits: Hits, *, offset: int, k: int, sort: str,
          min_score: float | None) -> dict[str, Any]:  # fmt: skip
    kept = [h for h in hits if min_score is None or h.score >= min_score]
    if sort == "mtime":
        kept.sort(key=lambda h: h.metadata.get("mtime") or datetime.min, reverse=True)
    page = kept[offset : offset + k]
    timings = {**hits.timings}
    timings["search"] = timings.pop("total", 0.0)
    return {
        "index": gen.name,
        "generation": gen.number,
        "total": len(kept),
        "offset": offset,
        "k": k,
        "hits": [_hit_json(h, offset + i + 1) for i, h in enumerate(page)],
        "timings": timings,
    }


def run_search(
    gen: Generation, req: SearchRequest, *, image: Image.Image | None, config: ServeConfig
) -> dict[str, Any]:
    """One page of a search (without `total` timings: the handler adds them)."""
    if req.offset + req.k > config.max_k:
        raise InputError(f"offset + k is {req.offset + req.k}; the limit is {config.max_k}")
    want = config.max_k if req.sort == "mtime" else req.offset + req.k
    hits = _search(gen, req, image, want)
    return _page(gen, hits, offset=req.offset, k=req.k, sort=req.sort, min_score=req.min_score)


def run_caption(
    gen: Generation, req: CaptionRequest, *, image: Image.Image | None, config: ServeConfig
) -> dict[str, Any]:
    """The captions nearest an indexed item (by id) or an uploaded image."""
    if req.k > config.max_k:
        raise InputError(f"k is {req.k}; the limit is {config.max_k}")
    if (req.id is None) == (image is None):
        raise InputError("give either an item id or an image to caption (one of them)")
    opts = SearchOptions(k=req.k, modality="text", where=req.where)
    if req.id is not None:
        hits = gen.index.search_vector(find_item(gen, req.id).vector(), options=opts)
    else:
        hits = gen.index.caption(image, options=opts)  # type: ignore[arg-type]
    return _page(gen, hits, offset=0, k=req.k, sort="score", min_score=None)
