"""Top-k search of one shard, exact re-scoring of its candidates, and merging shard results.

Compressed indexes only propose candidates: a larger pool (k * oversample) is re-scored with
the float16 vectors kept beside the codes, or with the caller's own full-precision vectors,
so returned scores are true inner products (to float16 precision, ~1e-3). Shard results are
merged with a heap (`faiss.ResultHeap`) instead of concatenating everything.

`search_shards` searches many shards for the same queries on a small pool of threads (FAISS
releases the GIL; one query meets each shard on one core), so a 10-shard index answers in
about the time of 10 / cores shard searches. The pool is made on first use, under a lock;
`shutdown_shard_pool` stops its threads (waiting for searches under way), and the next search
makes a new one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from xretrieve._threads import default_workers
from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.store.ann.build import BuiltIndex, TunedParams, as_vectors, default_params
from xretrieve.store.ann.plan import extract_ivf

__all__ = ["merge_topk", "rescore", "search", "search_shards", "shutdown_shard_pool"]

# Rows gathered per re-scoring block: bounds the (queries, pool, d) temporary to ~64 MiB at d=512.
_RESCORE_BLOCK_ROWS = 32_768
# Row ids inside a merged (shard, row) pair are packed into one int64 for faiss' heap.
_ROW_BITS = 40
# Threads searching shards side by side: one a core, few enough to stay cheap when idle.
_SHARD_THREADS = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _search_params(built: BuiltIndex, params: TunedParams) -> Any | None:
    if built.plan.exact:
        return None
    if extract_ivf(built.index) is not None:
        return faiss.SearchParametersIVF(nprobe=max(1, params.nprobe or 1))  # type: ignore[call-arg]
    if built.plan.hnsw_m or params.ef_search:
        return faiss.SearchParametersHNSW(efSearch=max(1, params.ef_search or 16))  # type: ignore[attr-defined]
    return None


def _set_gpu_params(index: Any, params: TunedParams) -> None:
    # GPU indexes ignore per-call SearchParameters; their parameters are set on the object.
    space_cls = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)
    if params.nprobe:
        space_cls().set_index_parameter(index, "nprobe", int(params.nprobe))


def _faiss_search(
    built: BuiltIndex, q: Vectors, pool: int, params: TunedParams
) -> tuple[np.ndarray, np.ndarray]:
    if built.on_gpu:
        _set_gpu_params(built.index, params)
        scores, ids = built.index.search(q, pool)
    else:
        sp = _search_params(built, params)
        scores, ids = (
            built.index.search(q, pool, params=sp)
            if sp is not None
            else built.index.search(q, pool)
        )
    scores[ids < 0] = -np.inf
    return scores, ids


def _top_k_sorted(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def rescore(
    q: Vectors, ids: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of candidate `ids` (-1 = none) per query, scored against `rows_of(ids)`."""
    nq, pool = ids.shape
    scores = np.empty((nq, pool), dtype=np.float32)
    step = max(1, _RESCORE_BLOCK_ROWS // max(1, pool))
    safe = np.maximum(ids, 0)
    for s in range(0, nq, step):  # blocks bound the (queries, pool, d) gather
        rows = rows_of(safe[s : s + step])
        scores[s : s + step] = np.einsum("qd,qpd->qp", q[s : s + step], rows)
    scores[ids < 0] = -np.inf
    return _top_k_sorted(scores, ids, k)


def _rows_from(vectors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda ids: np.asarray(vectors[ids], dtype=np.float32)


def search(
    built: BuiltIndex,
    queries: Vectors,
    k: int,
    *,
    params: TunedParams | None = None,
    oversample: int | None = None,
    vectors: np.ndarray | None = None,
) -> tuple[npt.NDArray[np.float32], Ids]:
    """Top-k (scores descending, ids) per query; -inf / -1 pad when the shard has < k rows.

    Compressed plans search a pool of k * oversample candidates and re-score it with the
    stored re-scoring vectors, or with `vectors` (e.g. the shard's float32 rows) if given.
    """
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    q = as_vectors(queries, d=built.d, what="queries")
    p = params or built.params or default_params(built.plan)
    n = built.ntotal
    if n == 0 or len(q) == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    if vectors is not None:
        if vectors.shape != (n, built.d):
            raise InputError(
                f"re-scoring vectors have shape {vectors.shape}, expected {(n, built.d)}"
            )
        rows_of = _rows_from(vectors)
    elif built.rescorer is not None:
        rows_of = built.rescorer.rows
    else:
        rows_of = None
    factor = oversample if oversample is not None else max(p.oversample, built.plan.oversample)
    if factor < 1:
        raise InputError(f"oversample must be >= 1, got {factor}")
    pool = min(n, k * factor) if rows_of is not None else min(n, k)
    scores, ids = _faiss_search(built, q, max(pool, 1), p)
    if rows_of is not None:
        scores, ids = rescore(q, ids, rows_of, min(k, pool))
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def merge_topk(
    score_lists: Sequence[np.ndarray], id_lists: Sequence[np.ndarray], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Merge per-shard top-k into a global top-k: scores (nq, k) descending and (nq, k, 2) refs.

    `refs[..., 0]` is the shard's position in the lists and `refs[..., 1]` its row; missing
    results are (-1, -1) with score -inf.
    """
    if k <= 0:
        raise InputError(f"k must be positive, got {k}")
    if len(score_lists) != len(id_lists):
        raise InputError(f"{len(score_lists)} score arrays but {len(id_lists)} id arrays")
    if not score_lists:
        raise InputError("merge_topk needs at least one shard's results")
    nq = np.asarray(score_lists[0]).shape[0]
    heap = faiss.ResultHeap(nq, k, keep_max=True)
    for shard, (s, i) in enumerate(zip(score_lists, id_lists, strict=True)):
        s = np.asarray(s, dtype=np.float32)
        i = np.asarray(i, dtype=np.int64)
        if s.shape != i.shape or s.ndim != 2 or s.shape[0] != nq:
            raise InputError(
                f"shard {shard}: scores {s.shape} and ids {i.shape} must both be (nq={nq}, k)"
            )
        if i.size and i.max() >= 1 << _ROW_BITS:
            raise InputError(f"shard {shard}: row ids must be < 2**{_ROW_BITS}")
        packed = np.where(i >= 0, (shard << _ROW_BITS) | np.maximum(i, 0), -1)
        heap.add_result(np.where(i >= 0, s, -np.inf).astype(np.float32), packed)
    heap.finalize()
    ids = heap.I
    missing = ids < 0
    refs = np.stack([ids >> _ROW_BITS, ids & ((1 << _ROW_BITS) - 1)], axis=-1)
    refs[missing] = -1
    scores = heap.D.copy()
    scores[missing] = -np.inf
    return scores, refs


def _shard_pool() -> ThreadPoolExecutor | None:
    """The shared pool searching shards side by side, made on first use (None on one core)."""
    global _pool
    workers = min(default_workers(), _SHARD_THREADS)
    if workers < 2:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xr-shard")
        return _pool


def shutdown_shard_pool() -> None:
    """Stop the shard pool's threads, waiting for searches under way; the next use makes a new one."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def search_shards(
    builts: Sequence[BuiltIndex], queries: Vectors, k: int | Sequence[int]
) -> list[tuple[npt.NDArray[np.float32], Ids]]:
    """`search` of each shard (its own parameters) for the same queries, shards side by side.

    `k` is one value or one per shard. Results come back in the shards' order, exactly as
    `search` gives them; GPU shards and single-shard calls are searched in the caller's
    thread.
    """
    ks = [int(k)] * len(builts) if isinstance(k, (int, np.integer)) else [int(x) for x in k]
    if len(ks) != len(builts):
        raise InputError(f"{len(builts)} shards but {len(ks)} values of k")
    pool = _shard_pool() if len(builts) > 1 and not any(b.on_gpu for b in builts) else None
    if pool is None:
        return [search(b, queries, kk) for b, kk in zip(builts, ks, strict=True)]
    try:
        jobs = [pool.submit(search, b, queries, kk) for b, kk in zip(builts, ks, strict=True)]
    except RuntimeError:  # `shutdown_shard_pool` ran since `_shard_pool` handed this pool out
        return [search(b, queries, kk) for b, kk in zip(builts, ks, strict=True)]
    return [job.result() for job in jobs]
