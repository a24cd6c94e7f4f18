"""Tuning a shard's search: the smallest nprobe / efSearch that reaches a target recall@k.

Recall is measured at build time against exact search over the shard's own vectors, with
held-out rows as queries; the chosen parameters and the recall they measured are stored with
the shard, so every search starts from them.
"""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np

from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.store.ann.build import BuiltIndex, TunedParams, as_vectors
from xretrieve.store.ann.gpu import to_cpu
from xretrieve.store.ann.plan import extract_ivf
from xretrieve.store.ann.topk import search

__all__ = ["tune"]

# A stored row sits in the HNSW graph, so a greedy walk lands right on it and held-out rows
# overstate graph recall; noise of this relative norm made the tuned efSearch hold on unseen
# queries of SyntheticDataset (IVF needs none: a row's list does not depend on the row).
_GRAPH_TUNE_NOISE = 0.7


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    valid = np.maximum((truth >= 0).sum(axis=1), 1)
    return float(np.mean(hits.any(axis=2).sum(axis=1) / np.minimum(valid, k)))


def _tune_queries(vectors: Vectors, n_queries: int, noise: float, seed: int) -> tuple[Vectors, Ids]:
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False))
    q = vectors[rows].astype(np.float32)
    if noise > 0:
        g = rng.standard_normal(q.shape).astype(np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        g *= noise * np.linalg.norm(q, axis=1, keepdims=True)
        q += g
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q, rows.astype(np.int64)


def _drop_self(ids: np.ndarray, rows: Ids, k: int) -> np.ndarray:
    # Each query is a stored row: it must not count as its own neighbour. A stable sort on
    # "is self" moves that hit (if any) to the end; the first k left are the real neighbours.
    order = np.argsort(ids == rows[:, None], axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)[:, :k]


def _candidates(built: BuiltIndex) -> tuple[str, list[int]]:
    ivf = extract_ivf(built.index if not built.on_gpu else to_cpu(built.index))
    if ivf is not None:
        nlist = int(ivf.nlist)
        return "nprobe", sorted({min(nlist, 2**i) for i in range(0, nlist.bit_length() + 1)})
    if built.plan.hnsw_m:
        return "ef_search", [16, 32, 64, 128, 256, 512, 1024, 2048]
    return "", [0]


def tune(
    built: BuiltIndex,
    vectors: Vectors,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 200,
    noise: float | None = None,
    seed: int = 0,
) -> TunedParams:
    """Smallest nprobe / efSearch whose recall@k against exact search reaches `target_recall`.

    Queries are `n_queries` held-out rows of the shard, perturbed by `noise` (a relative
    norm; default 0 for IVF, 0.7 for HNSW graphs): each is left out of its own truth and
    results, so it stands for an unseen query from the same distribution. Truth is exact inner-product search over
    `vectors`. If no value reaches the target, the largest is returned with `reached=False`.
    """
    if not 0.0 < target_recall <= 1.0:
        raise InputError(f"target_recall must be in (0, 1], got {target_recall}")
    if k <= 0 or n_queries <= 0:
        raise InputError(f"k and n_queries must be positive, got k={k}, n_queries={n_queries}")
    x = as_vectors(vectors, d=built.d)
    if len(x) != built.ntotal:
        raise InputError(f"tune got {len(x)} vectors for an index of {built.ntotal}")
    over = built.plan.oversample
    if built.plan.exact or len(x) == 0:
        return TunedParams(oversample=over, k=k, target_recall=target_recall, recall=1.0)
    if noise is None:
        noise = _GRAPH_TUNE_NOISE if built.plan.hnsw_m else 0.0
    q, rows = _tune_queries(x, n_queries, noise, seed)
    kk = min(k, len(x) - 1)
    if kk <= 0:
        return TunedParams(oversample=over, k=k, target_recall=target_recall, recall=1.0)
    truth = _drop_self(faiss.knn(q, x, kk + 1, metric=faiss.METRIC_INNER_PRODUCT)[1], rows, kk)
    name, grid = _candidates(built)

    def measure(value: int) -> TunedParams:
        p = TunedParams(oversample=over, k=k, target_recall=target_recall, n_queries=len(q))
        if name:
            p = replace(p, **{name: value})  # type: ignore[arg-type]
        found = _drop_self(search(built, q, kk + 1, params=p)[1], rows, kk)
        return replace(p, recall=_recall(found, truth))

    if not name:
        p = measure(0)
        return replace(p, reached=p.recall >= target_recall)

    # Doubling finds the first grid value that reaches the target, then a bisection over
    # the integers below it finds the smallest one (recall grows with nprobe / efSearch).
    lo_value, best = 0, None
    for value in grid:
        got = measure(value)
        if got.recall >= target_recall:
            best = got
            break
        lo_value = value
    if best is None:
        return replace(got, reached=False)
    hi_value = getattr(best, name)
    while hi_value - lo_value > 1:
        mid = (lo_value + hi_value) // 2
        got = measure(mid)
        if got.recall >= target_recall:
            best, hi_value = got, mid
        else:
            lo_value = mid
    return best
