"""Recall through a built index: the evaluation protocol run on the index's items, exact beside.

Rules this module keeps:

- the gallery is the index's live image items; an item's relevance label comes from the
  evaluation data (a world's labels: items with the same set of concepts are relevant to each
  other; an image-caption set: an item is relevant to its own captions); an item the data does
  not know is relevant to no query, but stays in the gallery;
- the queries are the captions whose image is in the index (a world's `split`);
- *exact* is brute force over the model's own vectors of the same items, encoded afresh as
  evaluation does, block by block (`MAX_BLOCK_SCORES` scores at a time);
- *through the index* every caption goes through `Index.search` with k = max(ks): the shards,
  their tuned nprobe / efSearch, compressed codes, deletions and any `SearchOptions` given
  (hybrid fusion, re-ranking) all count;
- `overlap_at_k` is the index's recall@k against exact search: the share of the exact top k
  that the index's top k holds, averaged over queries.

Only text->image runs through the index (a caption query against image items): that is the
search users run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.train.evaluate import (
    DEFAULT_KS,
    _check_ks,
    chance_from_counts,
    keyed_recall,
)
from xretrieve.train.progress import progress_bar
from xretrieve.train.world import concept_key, load_labels

if TYPE_CHECKING:
    from xretrieve.query import Index, SearchOptions
    from xretrieve.train.datasets import EvalSet

__all__ = [
    "MAX_BLOCK_SCORES",
    "IndexEvalReport",
    "IndexQueries",
    "brute_force_top",
    "evaluate_index",
    "find_world",
    "index_items",
    "overlap_at_k",
    "recall_of_ranked",
    "search_ranked",
    "set_queries",
    "world_queries",
]

#: Scores computed at once per block of queries in brute-force search.
MAX_BLOCK_SCORES = 1 << 21


# -- pure functions on ranked lists ----------------------------------------------------------


def brute_force_top(
    queries: Vectors, gallery: Vectors, k: int, *, max_block_scores: int = MAX_BLOCK_SCORES
) -> Ids:
    """(n, min(k, g)) gallery positions of each query's top k by inner product, best first."""
    n, g = len(queries), len(gallery)
    if g == 0 or k <= 0:
        raise InputError("brute-force search needs a gallery item and k >= 1")
    k = min(k, g)
    out = np.empty((n, k), np.int64)
    rows = max(1, max_block_scores // g)
    for start in range(0, n, rows):
        neg = -(queries[start : start + rows] @ gallery.T)
        neg[np.isnan(neg)] = np.inf  # NaN ranks last
        top = np.argpartition(neg, k - 1, axis=1)[:, :k] if k < g else np.argsort(neg, axis=1)
        order = np.argsort(np.take_along_axis(neg, top, axis=1), axis=1, kind="stable")
        out[start : start + rows] = np.take_along_axis(top, order, axis=1)
    return out


def recall_of_ranked(
    ranked: Ids, query_labels: Ids, gallery_labels: Ids, ks: Sequence[int] = DEFAULT_KS
) -> dict[int, float]:
    """Share of queries with an item of their own label among their first K ranked positions.

    `ranked` is (queries, >= max K) gallery positions, -1 where a list came up short;
    a label below 0 matches nothing.
    """
    ks = _check_ks(ks)
    ranked = np.asarray(ranked, np.int64)
    query_labels = np.asarray(query_labels, np.int64)
    gallery_labels = np.asarray(gallery_labels, np.int64)
    if ranked.ndim != 2 or len(ranked) != len(query_labels) or len(ranked) == 0:
        raise InputError("ranked must be a (queries, K) matrix with one label per query")
    found = np.where(ranked >= 0, gallery_labels[np.maximum(ranked, 0)], -1)
    match = (found == query_labels[:, None]) & (found >= 0)
    return {k: float(match[:, :k].any(axis=1).mean()) for k in ks}


def overlap_at_k(found: Ids, truth: Ids, k: int) -> float:
    """Mean share of each query's exact top k (`truth`) present in its found top k."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if len(found) != len(truth) or len(truth) == 0:
        raise InputError("found and truth must hold the same (non-zero) number of queries")
    hits = ((found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)).any(axis=1)
    valid = np.maximum((truth >= 0).sum(axis=1), 1)
    return float(np.mean(hits.sum(axis=1) / valid))


# -- the index's side -----------------------------------------------------------------------


def index_items(idx: Index) -> list[Path]:
    """The files of the index's live image items, in shard-then-row order."""
    root = Path(idx.root)
    out: list[Path] = []
    for s in idx.shards("image"):
        paths = s.metadata.column("path").to_pylist()
        dead = set(s.deleted.tolist())
        out.extend(root / p for i, p in enumerate(paths) if i not in dead)
    return out


def _bar(total: int, progress: bool | None) -> Any:
    return progress_bar(total, "queries", "q", progress)


def search_ranked(
    idx: Index,
    captions: Sequence[str],
    position: Mapping[Path, int],
    *,
    k: int,
    options: SearchOptions | None = None,
    progress: bool | None = None,
) -> Ids:
    """(captions, k) gallery positions of each caption's top k through `Index.search`, -1 padded."""
    from xretrieve.query import SearchOptions

    opts = replace(options or SearchOptions(), k=k, modality="image")
    out = np.full((len(captions), k), -1, np.int64)
    with _bar(len(captions), progress) as bar:
        for i, caption in enumerate(captions):
            hits = idx.search(caption, options=opts)
            out[i, : len(hits)] = [position.get(h.abs_path, -1) for h in hits]
            bar.update(1)
    return out


# -- what is asked, and what is relevant -----------------------------------------------------


@dataclass(frozen=True)
class IndexQueries:
    """Queries for an index: captions, their labels, and the label of each gallery item."""

    captions: list[str]
    labels: Ids  # (captions,) int64
    gallery_labels: Ids  # (items,) int64; -1 for an item the data does not know
    source: str


def find_world(root: str | os.PathLike[str]) -> Path | None:
    """The world folder an index root lies in (the root itself or one of its parents), if any."""
    p = Path(root).expanduser().resolve()
    return next((d for d in (p, *p.parents) if (d / "world.json").is_file()), None)


def world_queries(
    items: Sequence[Path], world_dir: str | os.PathLike[str], *, split: str = "test"
) -> IndexQueries:
    """A world's `split` captions whose image is among `items`; labels are concept sets."""
    world = Path(world_dir).expanduser().resolve()
    labels = load_labels(world)
    ids: dict[frozenset[str], int] = {}
    gallery = np.full(len(items), -1, np.int64)
    captions: list[str] = []
    caption_labels: list[int] = []
    for i, item in enumerate(items):
        try:
            rel = item.resolve().relative_to(world).as_posix()
        except ValueError:
            continue  # outside the world: relevant to nothing
        lab = labels.get(rel)
        if lab is None:
            continue
        gallery[i] = ids.setdefault(concept_key(lab), len(ids))
        if lab.split == split:
            captions.extend(lab.captions)
            caption_labels.extend([int(gallery[i])] * len(lab.captions))
    if not captions:
        raise InputError(f"the index holds none of the {split!r} images of world {world}")
    return IndexQueries(captions, np.asarray(caption_labels, np.int64), gallery, str(world))


def set_queries(items: Sequence[Path], data: EvalSet) -> IndexQueries:
    """An image-caption set's captions whose image is among `items`; each image is its label."""
    own = {p.resolve(): i for i, p in enumerate(data.images)}
    gallery = np.asarray([own.get(p.resolve(), -1) for p in items], np.int64)
    present = np.zeros(data.n_images, bool)
    present[gallery[gallery >= 0]] = True
    keep = np.flatnonzero(present[data.caption_image])
    if not len(keep):
        raise InputError(f"the index holds none of the images of {data.source}")
    return IndexQueries(
        [data.captions[i] for i in keep],
        np.asarray(data.caption_image[keep], np.int64),
        gallery,
        str(data.source),
    )


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEvalReport:
    """Text->image R@K by exact search and through the index, and the index's recall@k."""

    index: str
    model: str
    data: str
    n_items: int
    n_queries: int
    exact: dict[int, float]
    through_index: dict[int, float]
    chance: dict[int, float]
    overlap: float  # recall@overlap_k of the index's results against exact search
    overlap_k: int
    options: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model": self.model,
            "data": self.data,
            "n_items": self.n_items,
            "n_queries": self.n_queries,
            "exact": keyed_recall(self.exact),
            "index_recall": keyed_recall(self.through_index),
            "chance": keyed_recall(self.chance),
            f"index_vs_exact_recall@{self.overlap_k}": round(self.overlap, 4),
            "options": self.options,
            "shards": self.shards,
            "seconds": round(self.seconds, 2),
        }

    def format_table(self) -> str:
        ks = list(self.exact)
        head = f"{'text->image':<14}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
        lines = [
            f"index {self.index} (model {self.model}): {self.n_queries} captions of "
            f"{self.data} against {self.n_items} image items",
            head,
        ]
        for name, got in (
            ("exact", self.exact),
            ("index", self.through_index),
            ("chance", self.chance),
        ):
            lines.append(f"{name:<14}" + "".join(f"{got[k]:>8.3f}" for k in ks))
        lines.append(
            f"index vs exact search: recall@{self.overlap_k} = {self.overlap:.3f} "
            f"(share of the exact top {self.overlap_k} the index returns)"
        )
        for s in self.shards:
            measured = f"{s['recall']:.3f}" if s.get("recall") is not None else "-"
            params = " ".join(f"{k}={v}" for k, v in s["params"].items()) or "-"
            lines.append(
                f"  shard {s['name']}: {s['index_type']} {params}, {s['rows']} rows, "
                f"recall@10 measured at build {measured}"
            )
        return "\n".join(lines)


def _shard_rows(idx: Index) -> list[dict[str, Any]]:
    out = []
    for s in idx.manifest.shards:
        if s.modality != "image":
            continue
        params = {k: s.ann[k] for k in ("nprobe", "ef_search", "oversample") if s.ann.get(k, 0) > 1}
        out.append(
            {
                "name": s.name,
                "index_type": s.index_type,
                "rows": s.live_rows,
                "params": params,
                "recall": s.ann.get("recall"),
            }
        )
    return out


def evaluate_index(
    idx: Index,
    *,
    world: str | os.PathLike[str] | None = None,
    data: EvalSet | None = None,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    options: SearchOptions | None = None,
    overlap_k: int = 10,
    progress: bool | None = None,
) -> IndexEvalReport:
    """Text->image R@K of the index's items, by exact search and through `idx.search`.

    The labels come from `data` (an image-caption set), else from `world`, else from the
    world folder the index was built in (`find_world`).
    """
    from xretrieve.query import SearchOptions
    from xretrieve.train.retrieval import encode_eval_images, encode_eval_texts

    t0 = time.perf_counter()
    ks = _check_ks(ks)
    if overlap_k <= 0:
        raise InputError(f"overlap_k must be positive, got {overlap_k}")
    items = index_items(idx)
    if not items:
        raise InputError(f"index {idx.path} holds no image items")
    if data is not None:
        q = set_queries(items, data)
    else:
        where = Path(world) if world is not None else find_world(idx.root)
        if where is None:
            raise InputError(
                f"index {idx.path} was not built inside a world folder ({idx.root}): "
                "name the world or the image-caption set its items come from"
            )
        q = world_queries(items, where, split=split)
    top = max(*ks, overlap_k)
    enc = idx.encoder
    gallery = encode_eval_images(enc, items, progress=progress)
    texts = encode_eval_texts(enc, q.captions, progress=progress)
    exact_top = brute_force_top(texts, gallery, top)
    opts = options or SearchOptions()
    position = {p: i for i, p in enumerate(items)}
    found = search_ranked(idx, q.captions, position, k=top, options=opts, progress=progress)
    known = q.gallery_labels[q.gallery_labels >= 0]
    relevant = np.bincount(known, minlength=int(q.labels.max()) + 1)[q.labels]
    return IndexEvalReport(
        index=str(idx.path),
        model=enc.spec.name,
        data=q.source,
        n_items=len(items),
        n_queries=len(q.captions),
        exact=recall_of_ranked(exact_top, q.labels, q.gallery_labels, ks),
        through_index=recall_of_ranked(found, q.labels, q.gallery_labels, ks),
        chance=chance_from_counts(relevant, len(items), ks),
        overlap=overlap_at_k(found, exact_top, overlap_k),
        overlap_k=overlap_k,
        options={k: v for k, v in asdict(opts).items() if k not in ("k", "modality")},
        shards=_shard_rows(idx),
        seconds=time.perf_counter() - t0,
    )
