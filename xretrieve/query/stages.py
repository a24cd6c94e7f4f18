"""The stages of a search after the query vector: ANN, lexical, exact scores, fuse, cut, hits.

Each stage is a function of the shards, the candidates so far and a few settings; the
`Index` (query/index.py) runs them in order and keeps the caches they read (filter
results, row selectors, the BM25 index). Rules kept here:

- Candidates are (shard position, row) pairs with their scores, best first after each stage.
- A filtered shard is searched among its allowed rows only and gives at least
  min(pool, allowed rows) results: exactly when the subset is small (or the index is on a
  GPU), else through a FAISS row selector, falling back to exact when that comes up short.
- Exact scores are inner products with the stored vectors (`ann.reconstruct_vectors`),
  computed by the ANN module's own re-scoring (`ann.rescore`), never a copy of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from xretrieve import store
from xretrieve._types import Ids, Vectors
from xretrieve.query import scoring
from xretrieve.query.hits import Hit
from xretrieve.query.lexical import LexicalIndex
from xretrieve.query.options import SearchOptions
from xretrieve.store import ann, selectors

__all__ = [
    "Candidates",
    "LexicalList",
    "Timer",
    "dense",
    "exact",
    "exact_top",
    "finish",
    "fuse",
    "gather",
    "lexical",
    "search_subset",
    "to_hits",
]

Scores = npt.NDArray[np.float32]
# Rows scored per block in exact search: bounds the gathered (rows, d) temporary.
_EXACT_BLOCK = 32_768
# A (shard, row) pair packed into one int64 key: row in the low bits.
_ROW_BITS = 40


class Timer:
    """Milliseconds per stage, summed when a stage runs twice."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.start = self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to `stage`."""
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000.0
        self._t = now

    def total(self) -> dict[str, float]:
        """The stage timings plus "total", the time since the timer started."""
        self.ms["total"] = (time.perf_counter() - self.start) * 1000.0
        return self.ms


@dataclass
class Candidates:
    """Rows gathered so far: shard position, row, and their dense / lexical scores."""

    shard: Ids
    row: Ids
    dense: Scores
    lexical: Scores | None = None
    score: Scores | None = None
    vectors: Vectors | None = None

    @classmethod
    def empty(cls) -> Candidates:
        """No candidates."""
        none = np.empty(0, np.int64)
        return cls(none, none, np.empty(0, np.float32))

    @property
    def keys(self) -> Ids:
        """One int64 per candidate identifying its (shard, row)."""
        return (self.shard << _ROW_BITS) | self.row

    @property
    def ranking(self) -> Scores:
        """The score the final order follows: the fused one, else the dense one."""
        return self.score if self.score is not None else self.dense

    def take(self, order: npt.NDArray[np.int64]) -> Candidates:
        """The candidates at positions `order`, in that order."""

        def sub(a: Any) -> Any:
            return None if a is None else a[order]

        return Candidates(
            self.shard[order],
            self.row[order],
            self.dense[order],
            sub(self.lexical),
            sub(self.score),
            sub(self.vectors),
        )


@dataclass(frozen=True)
class LexicalList:
    """The BM25 stage's result: the index, every document's score, the top documents."""

    index: LexicalIndex
    scores: npt.NDArray[np.float32]
    top: Candidates


# -- ANN ------------------------------------------------------------------------------------


def _stored_rows(built: ann.BuiltIndex) -> Callable[[np.ndarray], np.ndarray]:
    """`ann.rescore`'s row reader for a shard: stored vectors of an id array of any shape."""
    d = built.d
    return lambda ids: ann.reconstruct_vectors(built, ids.reshape(-1)).reshape(*ids.shape, d)


def exact_top(built: ann.BuiltIndex, q: Vectors, rows: Ids, k: int) -> tuple[Scores, Ids]:
    """Top k of `rows` by exact inner product with their stored vectors: (1, <=k) scores, ids.

    `ann.rescore` scores each block of rows; blocks bound the gathered (rows, d) temporary
    and are merged with `ann.merge_topk`'s heap.
    """
    rows_of = _stored_rows(built)
    if len(rows) <= _EXACT_BLOCK:
        return ann.rescore(q, rows[None, :], rows_of, k)
    blocks = [rows[s : s + _EXACT_BLOCK][None, :] for s in range(0, len(rows), _EXACT_BLOCK)]
    scores, ids = zip(*(ann.rescore(q, b, rows_of, k) for b in blocks), strict=True)
    top, refs = ann.merge_topk(scores, ids, min(k, len(rows)))
    return top, refs[..., 1]


def search_subset(
    built: ann.BuiltIndex,
    q: Vectors,
    want: int,
    rows: Ids,
    *,
    exact_max: int,
    selector: Callable[[], selectors.RowSelector],
) -> tuple[Scores, Ids]:
    """Top `want` (<= len(rows)) of one shard among `rows` only, never fewer.

    Up to `exact_max` rows are scored exactly; more go through the row `selector` (made
    only when needed), re-scored exactly when the plan's codes are compressed.
    """
    if len(rows) > exact_max and not built.on_gpu:
        fetch = want * max(1, built.plan.oversample)
        d, r = selectors.search_selected(built, q, fetch, selector())
        if built.plan.needs_rescore:
            d, r = ann.rescore(q, r, _stored_rows(built), want)
        if int((r >= 0).sum()) >= want:
            return d, r
        # A selective filter over IVF lists can leave the probed lists empty: go exact.
    return exact_top(built, q, rows, want)


def dense(
    shards: list[store.LoadedShard],
    q: Vectors,
    pool: int,
    allowed: list[Ids | None] | None,
    subset: Callable[[int, Ids], tuple[Scores, Ids]],
) -> Candidates:
    """Top `pool` rows by ANN score over the shards (allowed rows only), merged by a heap.

    `allowed[i]` None skips shard i; `subset(i, rows)` searches shard i among `rows`.
    """
    searched: list[int] = []
    whole: list[int] = []  # shards searched whole: side by side (`ann.search_shards`)
    found: dict[int, tuple[Scores, Ids]] = {}
    for i, s in enumerate(shards):
        rows = None if allowed is None else allowed[i]
        if allowed is not None and (rows is None or len(rows) == 0):
            continue  # ruled out by partition statistics, or nothing matches
        searched.append(i)
        if rows is None or len(rows) == s.info.rows:
            whole.append(i)
        else:
            found[i] = subset(i, rows)
    if whole:
        ks = [min(pool, max(1, shards[i].info.rows)) for i in whole]
        builts = [shards[i].index for i in whole]
        found |= zip(whole, ann.search_shards(builts, q, ks), strict=True)
    scores = [found[i][0] for i in searched]
    ids = [found[i][1] for i in searched]
    if not searched:
        return Candidates.empty()
    top, refs = ann.merge_topk(scores, ids, pool)
    keep = refs[0, :, 0] >= 0
    return Candidates(
        np.asarray(searched, np.int64)[refs[0, keep, 0]],
        refs[0, keep, 1].astype(np.int64),
        top[0, keep].astype(np.float32),
    )


# -- lexical, exact scores, fusion ---------------------------------------------------------


def lexical(
    lex: LexicalIndex, text: str, pool: int, allowed: list[Ids | None] | None
) -> LexicalList:
    """BM25 scores of every (allowed) document and the top `pool` documents with a score > 0."""
    mask = None
    if allowed is not None:
        mask = np.zeros(lex.n_docs, bool)
        for i, rows in enumerate(allowed):
            if rows is not None:
                mask[lex.offsets[i] + rows] = True
    all_scores = lex.scores(text, mask=mask)
    top = scoring.top_k(all_scores, pool)
    top = top[all_scores[top] > 0]
    shard, row = lex.split(top)
    found = Candidates(
        shard.astype(np.int64),
        row.astype(np.int64),
        np.zeros(len(top), np.float32),
        lexical=all_scores[top],
    )
    return LexicalList(lex, all_scores, found)


def gather(shards: list[store.LoadedShard], cand: Candidates) -> Vectors:
    """Stored vectors of the candidates, one batched reconstruct per shard."""
    out = np.empty((len(cand.row), shards[0].index.d if shards else 0), np.float32)
    for s in np.unique(cand.shard):
        at = np.flatnonzero(cand.shard == s)
        out[at] = ann.reconstruct_vectors(shards[int(s)].index, cand.row[at])
    return out


def exact(
    shards: list[store.LoadedShard], q: Vectors, cand: Candidates, lex: LexicalList | None
) -> Candidates:
    """Union with the lexical candidates, then exact dense scores from stored vectors."""
    if lex is not None:
        keys = np.concatenate([cand.keys, lex.top.keys])
        _, first = np.unique(keys, return_index=True)
        first.sort()  # dense candidates first, in their order, then lexical-only ones
        keys = keys[first]
        cand = Candidates(
            keys >> _ROW_BITS, keys & ((1 << _ROW_BITS) - 1), np.zeros(len(keys), np.float32)
        )
    cand.vectors = gather(shards, cand)
    cand.dense = (cand.vectors @ q[0]).astype(np.float32)
    return cand.take(np.argsort(-cand.dense, kind="stable"))


def fuse(cand: Candidates, lex: LexicalList, opts: SearchOptions) -> Candidates:
    """Fused scores (RRF or convex), candidates re-ordered by them."""
    cand.lexical = lex.scores[lex.index.offsets[cand.shard] + cand.row]
    if opts.fusion == "convex":
        cand.score = scoring.convex_fusion(cand.dense, cand.lexical, alpha=opts.alpha)
    else:
        # Each list ranks its own top `pool`; a candidate outside a list gets nothing from it.
        dense_rank = scoring.top_k(cand.dense, opts.pool)
        pos = {int(x): i for i, x in enumerate(cand.keys.tolist())}
        lex_rank = np.asarray([pos[int(x)] for x in lex.top.keys.tolist()], np.int64)
        cand.score = scoring.rrf([dense_rank, lex_rank], len(cand.row), k=opts.rrf_k)
    return cand.take(scoring.top_k(cand.score, len(cand.score)))


# -- the cut and the hits ---------------------------------------------------------------------


def finish(shards: list[store.LoadedShard], cand: Candidates, opts: SearchOptions) -> Candidates:
    """Cut to k: duplicate collapse, then MMR, then the first k by score."""
    if opts.dedup is not None or opts.mmr is not None:
        if cand.vectors is None:
            cand.vectors = gather(shards, cand)
        if opts.dedup is not None:
            cand = cand.take(scoring.collapse_duplicates(cand.vectors, threshold=opts.dedup))
        if opts.mmr is not None and cand.vectors is not None:
            cand = cand.take(scoring.mmr(cand.ranking, cand.vectors, opts.k, lam=opts.mmr))
    return cand.take(np.arange(min(opts.k, len(cand.row))))


def to_hits(
    shards: list[store.LoadedShard], cand: Candidates, *, root: str, with_components: bool
) -> list[Hit]:
    """The candidates as hits, with their metadata rows (one vectorised take per shard)."""
    if len(cand.row) == 0:
        return []
    parts, where = [], np.empty(len(cand.row), np.int64)
    offset = 0
    for s in np.unique(cand.shard):
        at = np.flatnonzero(cand.shard == s)
        parts.append(shards[int(s)].metadata.take(pa.array(cand.row[at])))
        where[at] = np.arange(offset, offset + len(at))
        offset += len(at)
    rows = pa.concat_tables(parts).take(pa.array(where)).to_pylist()
    scores = cand.ranking.tolist()
    dense_scores = cand.dense.tolist()
    lexical_scores = cand.lexical.tolist() if cand.lexical is not None else None
    return [
        Hit(
            rank=i + 1,
            score=float(scores[i]),
            path=meta["path"],
            modality=meta["modality"],
            caption=meta["caption"],
            metadata=meta,
            root=root,
            components=(
                {"dense": float(dense_scores[i]), "lexical": float(lexical_scores[i])}
                if with_components and lexical_scores is not None
                else {}
            ),
        )
        for i, meta in enumerate(rows)
    ]
