"""FAISS indexes for one shard: choose, build, tune, search, (de)serialise, GPU switch.

Vectors are float32, L2-normalised, compared by inner product; ids are the row numbers
0..n-1 of the shard. Compressed indexes only propose candidates: a larger pool is re-scored
with float16 vectors kept beside the codes, or with the caller's own full-precision
vectors, so returned scores are true inner products (to float16 precision, ~1e-3).

On disk, `write_index(built, "x.faiss")` writes three files, each atomically::

    x.faiss               the FAISS index (always CPU)
    x.faiss.json          plan, tuned search parameters, re-scoring layout, format version
    x.faiss.rescore.npy   re-scoring vectors (only for plans that re-score)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from xretrieve._fs import atomic_write
from xretrieve._types import Ids, Vectors
from xretrieve.errors import IndexCorruptError, IndexNotFoundError, InputError

__all__ = [
    "FLAT_MAX_N",
    "IVF_FLAT_MAX_N",
    "KINDS",
    "BuiltIndex",
    "IndexPlan",
    "Rescorer",
    "TunedParams",
    "build_index",
    "default_params",
    "estimate_bytes",
    "faiss_gpu_count",
    "index_files",
    "merge_topk",
    "on_device",
    "plan_index",
    "read_index",
    "reconstruct_vectors",
    "search",
    "to_cpu",
    "to_device",
    "tune",
    "use_gpu_now",
    "with_params",
    "write_index",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Largest shard searched exactly: one query over 100k x 512 measured 7.3 ms on one core here,
#: so 20k stays near 1.5 ms while needing no training or tuning.
FLAT_MAX_N = 20_000
#: Largest shard kept as IVF-Flat (exact scores, full float32 codes) before codes are compressed.
IVF_FLAT_MAX_N = 300_000
KINDS = ("flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq", "opq")
RescoreKind = Literal["none", "fp16"]
UseGpu = bool | Literal["auto"]

_HNSW_M = 32
# Bytes per vector an IVF list spends on the stored int64 id.
_IVF_ID_BYTES = 8
# k-means wants >= 39 points per centroid; the sample cap and 10 iterations bound training
# to ~30 s for 1M x 512 on 2 cores (cost is linear in both) while recall at the tuned nprobe
# barely moves.
_TRAIN_PER_LIST = 40
_TRAIN_MAX = 1 << 17
_KMEANS_ITER = 10
# A stored row sits in the HNSW graph, so a greedy walk lands right on it and held-out rows
# overstate graph recall; noise of this relative norm made the tuned efSearch hold on unseen
# queries of SyntheticDataset (IVF needs none: a row's list does not depend on the row).
_GRAPH_TUNE_NOISE = 0.7
_SIDE_JSON = ".json"
_SIDE_RESCORE = ".rescore.npy"
# Rows gathered per re-scoring block: bounds the (queries, pool, d) temporary to ~64 MiB at d=512.
_RESCORE_BLOCK_ROWS = 32_768
# Row ids inside a merged (shard, row) pair are packed into one int64 for faiss' heap.
_ROW_BITS = 40


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class IndexPlan:
    """How to index one shard: FAISS factory string, its parameters and the re-scoring mode."""

    kind: str
    factory: str
    n: int
    d: int
    nlist: int = 0
    hnsw_m: int = 0
    rescore: RescoreKind = "none"
    oversample: int = 1
    train_size: int = 0

    @property
    def exact(self) -> bool:
        """True when search is exhaustive, so no tuning is needed."""
        return self.kind == "flat"

    @property
    def needs_rescore(self) -> bool:
        """True when candidates are re-scored with vectors stored beside the codes."""
        return self.rescore != "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        """Inverse of `to_dict`."""
        return cls(**data)


def _pow2_nlist(n: int) -> int:
    # ~4*sqrt(n) lists as a power of two, halved until lists average >= 39 vectors (k-means'
    # minimum for a stable fit).
    nlist = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(n))))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def _pq_m(d: int) -> int:
    # 4-bit fast-scan PQ with one sub-quantizer per 4 dimensions: d/2 bytes per vector.
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return m


def _train_size(n: int, nlist: int) -> int:
    return min(n, max(_TRAIN_PER_LIST * nlist, 10_000), _TRAIN_MAX)


def _make_plan(kind: str, n: int, d: int, *, rescore: RescoreKind | None = None) -> IndexPlan:
    nlist = _pow2_nlist(n)
    train = _train_size(n, nlist)
    if kind == "flat":
        return IndexPlan(kind="flat", factory="Flat", n=n, d=d)
    if kind == "hnsw":
        return IndexPlan(kind="hnsw", factory=f"HNSW{_HNSW_M},Flat", n=n, d=d, hnsw_m=_HNSW_M)
    if kind == "ivf-flat":
        f = f"IVF{nlist},Flat"
        return IndexPlan(kind=kind, factory=f, n=n, d=d, nlist=nlist, train_size=train)
    if kind == "ivf-sq8":
        f = f"IVF{nlist},SQ8"
        return IndexPlan(kind=kind, factory=f, n=n, d=d, nlist=nlist, train_size=train)
    if kind in ("ivf-pq", "opq"):
        m = _pq_m(d)
        f = f"IVF{nlist},PQ{m}x4fs" if kind == "ivf-pq" else f"OPQ{m},IVF{nlist},PQ{m}x4fs"
        rs: RescoreKind = "fp16" if rescore is None else rescore
        # 4-bit PQ ranks coarsely; re-scoring a pool of 8*k recovers the exact order.
        return IndexPlan(
            kind=kind,
            factory=f,
            n=n,
            d=d,
            nlist=nlist,
            rescore=rs,
            oversample=8 if rs != "none" else 1,
            train_size=train,
        )
    raise InputError(
        f"unknown index type {kind!r}; use one of {', '.join(KINDS)} or a FAISS factory string"
    )


def estimate_bytes(plan: IndexPlan) -> int:
    """Approximate resident bytes of the index plus its re-scoring vectors."""
    n, d = plan.n, plan.d
    per: float
    if plan.kind == "flat":
        per = 4 * d
    elif plan.kind == "hnsw":
        per = 4 * d + 2 * plan.hnsw_m * 4 * 1.1  # level-0 links dominate; upper levels ~10%
    elif plan.kind == "ivf-flat":
        per = 4 * d + _IVF_ID_BYTES
    elif plan.kind == "ivf-sq8":
        per = d + _IVF_ID_BYTES
    elif plan.kind in ("ivf-pq", "opq"):
        per = _pq_m(d) / 2 + _IVF_ID_BYTES
    else:
        per = 4 * d  # a raw factory string: assume the worst
    per += {"none": 0, "fp16": 2 * d}[plan.rescore]
    return math.ceil(per * n + 4 * d * plan.nlist)


def plan_index(
    n: int,
    d: int,
    *,
    memory_budget_bytes: int | None = None,
    index_type: str | None = None,
) -> IndexPlan:
    """Choose the index for a shard of n vectors of dimension d.

    Rule (first that applies):

    - `index_type` overrides: a short name (flat, hnsw, ivf-flat, ivf-sq8, ivf-pq, opq) or a
      raw FAISS factory string (used as is, inner product, no re-scoring).
    - n <= FLAT_MAX_N (20k): exact `Flat` (one query ~1.5 ms on one core at d=512).
    - n <= IVF_FLAT_MAX_N (300k): `IVF{~4*sqrt(n)},Flat` - exact scores, nprobe tuned.
    - larger: `IVF{~4*sqrt(n)},SQ8` - 8-bit codes, d + 8 bytes a vector (25% of float32 at
      d=512), scores within ~1e-3 of exact. It beat 4-bit fast-scan PQ + fp16 re-scoring on
      build time and size at equal recall (see scripts/bench_faiss.py).

    With `memory_budget_bytes`, a choice whose `estimate_bytes` exceeds the budget steps down
    the ladder ivf-pq + fp16 re-scoring (2.5d + 8 B/vector) -> ivf-sq8 (d + 8) -> ivf-pq
    without re-scoring (d/2 + 8, lower recall); `InputError` if even the last does not fit.
    """
    if n < 0 or d <= 0:
        raise InputError(f"cannot plan an index for n={n}, d={d}: need n >= 0 and d > 0")
    if index_type is not None:
        name = index_type.strip()
        if name.lower() in KINDS:
            return _make_plan(name.lower(), n, d)
        return _factory_plan(name, n, d)
    if n <= FLAT_MAX_N:
        first = _make_plan("flat", n, d)
    elif n <= IVF_FLAT_MAX_N:
        first = _make_plan("ivf-flat", n, d)
    else:
        first = _make_plan("ivf-sq8", n, d)
    if memory_budget_bytes is None or estimate_bytes(first) <= memory_budget_bytes:
        return first
    ladder = [
        _make_plan("ivf-pq", n, d, rescore="fp16"),
        _make_plan("ivf-sq8", n, d),
        _make_plan("ivf-pq", n, d, rescore="none"),
    ]
    fitting = [p for p in ladder if estimate_bytes(p) <= memory_budget_bytes]
    if not fitting or n <= 0:
        need = min(estimate_bytes(p) for p in ladder)
        raise InputError(
            f"no index for {n} x {d} vectors fits in {memory_budget_bytes} bytes "
            f"(smallest needs ~{need}); raise the budget or split the shard"
        )
    return fitting[0]


def _factory_plan(factory: str, n: int, d: int) -> IndexPlan:
    try:
        probe = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(
            f"{factory!r} is neither a known index type ({', '.join(KINDS)}) nor a valid FAISS factory string: {e}"
        ) from e
    ivf = _extract_ivf(probe)
    nlist = int(ivf.nlist) if ivf is not None else 0
    hnsw_m = _hnsw_m(probe)
    train = 0 if probe.is_trained else _train_size(n, nlist)
    return IndexPlan(
        kind="factory", factory=factory, n=n, d=d, nlist=nlist, hnsw_m=hnsw_m, train_size=train
    )


# ---------------------------------------------------------------------------------------------
# Built indexes


@dataclass(frozen=True)
class Rescorer:
    """Float16 copies of the shard's vectors, kept beside compressed codes to re-score them."""

    kind: RescoreKind
    codes: npt.NDArray[np.float16]  # (n, d)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors."""
        return int(self.codes.nbytes)

    def rows(self, ids: np.ndarray) -> npt.NDArray[np.float32]:
        """Decode the rows at `ids` (any shape, all >= 0) to float32."""
        return np.asarray(self.codes[ids], dtype=np.float32)


def _encode_rescore(vectors: Vectors, kind: RescoreKind) -> Rescorer | None:
    if kind == "none":
        return None
    return Rescorer(kind="fp16", codes=vectors.astype(np.float16))


@dataclass(frozen=True)
class TunedParams:
    """Search parameters chosen at build time and the recall@k they measured."""

    nprobe: int = 0
    ef_search: int = 0
    oversample: int = 1
    k: int = 10
    target_recall: float = 0.95
    recall: float = 1.0
    n_queries: int = 0
    reached: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for the manifest and `xretrieve info`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TunedParams:
        """Inverse of `to_dict`."""
        return cls(**data)


@dataclass(frozen=True)
class BuiltIndex:
    """A FAISS index for one shard, its plan, re-scoring vectors and tuned parameters."""

    index: Any  # faiss.Index (CPU), or a GPU clone when on_gpu
    plan: IndexPlan
    rescorer: Rescorer | None = None
    params: TunedParams | None = None
    on_gpu: bool = False

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        """Vector dimension."""
        return int(self.index.d)


def default_params(plan: IndexPlan) -> TunedParams:
    """Untuned search parameters: a safe middle ground until `tune` has measured better ones."""
    return TunedParams(
        nprobe=max(1, min(plan.nlist, max(16, plan.nlist // 16))) if plan.nlist else 0,
        ef_search=128 if plan.hnsw_m else 0,
        oversample=plan.oversample,
        recall=1.0 if plan.exact else 0.0,  # 0.0: not measured
        reached=plan.exact,
    )


def with_params(built: BuiltIndex, params: TunedParams) -> BuiltIndex:
    """Return `built` carrying `params` as its default search parameters."""
    return replace(built, params=params)


def _as_vectors(x: object, *, d: int | None = None, what: str = "vectors") -> Vectors:
    arr = np.asarray(x)
    if arr.ndim == 1 and d is not None and arr.shape[0] == d:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D (n, d) array, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise InputError(f"{what} have dimension {arr.shape[1]}, the index has {d}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what} must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return out


def _extract_ivf(index: Any) -> Any | None:
    # The IVF layer under pre-transforms (OPQ) or refinement, or None for flat / HNSW.
    return faiss.try_extract_index_ivf(index)


def _hnsw_m(index: Any) -> int:
    h = faiss.downcast_index(index)
    return int(h.hnsw.nb_neighbors(1)) if hasattr(h, "hnsw") else 0


def _train_sample(vectors: Vectors, size: int, seed: int) -> Vectors:
    if size >= len(vectors):
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), size=size, replace=False)
    rows.sort()  # sorted gathers read memory in order
    return vectors[rows]


def build_index(
    vectors: Vectors, plan: IndexPlan, *, seed: int = 0, use_gpu: UseGpu = "auto"
) -> BuiltIndex:
    """Train (on a bounded random sample), add `vectors` with ids 0..n-1, keep re-scoring vectors."""
    x = _as_vectors(vectors, d=plan.d)
    try:
        index = faiss.index_factory(plan.d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"FAISS cannot build {plan.factory!r}: {e}") from e
    gpu = use_gpu_now(use_gpu)
    ivf = _extract_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.niter = _KMEANS_ITER
        if gpu:
            # k-means on the GPU; the trained index is then sharded for the add.
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(plan.d))
    if not index.is_trained:
        if len(x) == 0:
            raise InputError(f"{plan.factory} needs training vectors; the shard is empty")
        sample = _train_sample(x, plan.train_size or len(x), seed)
        if ivf is not None and len(sample) < ivf.nlist:
            raise InputError(
                f"{plan.factory} needs >= {ivf.nlist} vectors to train, got {len(sample)}"
            )
        index.train(sample)
    if ivf is not None:
        ivf.clustering_index = None
    device_index, on_gpu = to_device(index, use_gpu=gpu)
    device_index.add(x)
    return BuiltIndex(
        index=device_index,
        plan=plan,
        rescorer=_encode_rescore(x, plan.rescore),
        on_gpu=on_gpu,
    )


def reconstruct_vectors(built: BuiltIndex, ids: Ids | None = None) -> Vectors:
    """Stored vectors for `ids` (all rows if None): the re-scoring vectors, else the index's own."""
    n = built.ntotal
    rows = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise InputError(f"ids must lie in 0..{n - 1}")
    if built.rescorer is not None:
        return built.rescorer.rows(rows)
    index = to_cpu(built.index) if built.on_gpu else built.index
    ivf = _extract_ivf(index)
    if ivf is not None:
        # IVF reconstruction needs an id -> list map, built here once rather than at add time.
        ivf.make_direct_map()
    try:
        return (
            np.vstack([index.reconstruct_batch(rows)])
            if rows.size
            else np.zeros((0, built.d), np.float32)
        )
    except RuntimeError as e:
        raise InputError(f"{built.plan.factory} cannot reconstruct vectors: {e}") from e


# ---------------------------------------------------------------------------------------------
# Search


def _search_params(built: BuiltIndex, params: TunedParams) -> Any | None:
    if built.plan.exact:
        return None
    if _extract_ivf(built.index) is not None:
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


def _rescore(
    q: Vectors, ids: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
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
    q = _as_vectors(queries, d=built.d, what="queries")
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
        scores, ids = _rescore(q, ids, rows_of, min(k, pool))
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# Tuning


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
    ivf = _extract_ivf(built.index if not built.on_gpu else to_cpu(built.index))
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
    x = _as_vectors(vectors, d=built.d)
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


# ---------------------------------------------------------------------------------------------
# Merging shard results


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


# ---------------------------------------------------------------------------------------------
# GPU switch


def faiss_gpu_count() -> int:
    """GPUs FAISS can use: 0 with the CPU build (faiss-cpu) or without a device."""
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except RuntimeError:
        return 0


def use_gpu_now(use_gpu: UseGpu = "auto") -> bool:
    """THE switch: whether to build and search on GPUs ("auto" = whenever FAISS reports one)."""
    if use_gpu == "auto":
        return faiss_gpu_count() > 0
    if use_gpu is True and faiss_gpu_count() == 0:
        raise InputError(
            "use_gpu=True but FAISS reports no GPU; install the `gpu` extra (faiss-gpu-cu12) "
            "on a machine with CUDA, or use use_gpu='auto'"
        )
    return bool(use_gpu)


def _cloner_options(*, shard: bool) -> Any:
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard  # split the vectors over the GPUs instead of replicating them
    co.useFloat16 = False
    return co


def to_device(index: Any, *, use_gpu: UseGpu = "auto") -> tuple[Any, bool]:
    """Clone `index` to all GPUs (sharded) when the switch says so; returns (index, on_gpu)."""
    if not use_gpu_now(use_gpu):
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index, co=_cloner_options(shard=True)), True
    except RuntimeError as e:
        # Some index types (HNSW, fast-scan PQ) have no GPU version: stay on the CPU.
        log.warning("FAISS cannot move %s to the GPU (%s); using the CPU", type(index).__name__, e)
        return index, False


def to_cpu(index: Any) -> Any:
    """A CPU copy of a GPU index (the same object with the CPU-only build)."""
    back = getattr(faiss, "index_gpu_to_cpu", None)
    return back(index) if back is not None else index


def on_device(built: BuiltIndex, *, use_gpu: UseGpu = "auto") -> BuiltIndex:
    """`built` moved to the GPUs when the switch says so (e.g. after `read_index`)."""
    if built.on_gpu:
        return built
    index, on_gpu = to_device(built.index, use_gpu=use_gpu)
    return replace(built, index=index, on_gpu=on_gpu)


# ---------------------------------------------------------------------------------------------
# On disk


def index_files(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The three files of an index at `path`: FAISS index, JSON sidecar, re-scoring vectors."""
    p = Path(path)
    return p, p.with_name(p.name + _SIDE_JSON), p.with_name(p.name + _SIDE_RESCORE)


def write_index(
    built: BuiltIndex, path: str | os.PathLike[str], *, params: TunedParams | None = None
) -> None:
    """Write the index, its re-scoring vectors and JSON sidecar atomically (index file last)."""
    index_path, json_path, rescore_path = index_files(path)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    cpu = to_cpu(built.index) if built.on_gpu else built.index
    chosen = params or built.params
    rs = built.rescorer
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "ntotal": int(cpu.ntotal),
        "d": int(cpu.d),
        "plan": built.plan.to_dict(),
        "params": chosen.to_dict() if chosen else None,
        "rescore": None,
    }
    if rs is not None:
        meta["rescore"] = {"kind": rs.kind, "file": rescore_path.name}

        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, rs.codes, allow_pickle=False)

        atomic_write(rescore_path, save_npy)

    def save_json(tmp: Path) -> None:
        tmp.write_text(json.dumps(meta), encoding="utf-8")

    atomic_write(json_path, save_json)
    atomic_write(index_path, lambda tmp: faiss.write_index(cpu, str(tmp)))


def _corrupt(path: Path, reason: str) -> IndexCorruptError:
    return IndexCorruptError(f"{path}: {reason}; rebuild the index with `xretrieve index --full`")


def read_index(path: str | os.PathLike[str], *, mmap: bool = False) -> BuiltIndex:
    """Read an index written by `write_index` (memory-mapped with `mmap=True`), on the CPU."""
    index_path, json_path, rescore_path = index_files(path)
    if not index_path.is_file():
        raise IndexNotFoundError(f"{index_path}: no FAISS index file there")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        plan = IndexPlan.from_dict(meta["plan"])
        params = TunedParams.from_dict(meta["params"]) if meta.get("params") else None
        version = int(meta["format_version"])
    except FileNotFoundError as e:
        raise _corrupt(json_path, "the index sidecar is missing") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _corrupt(json_path, f"the index sidecar cannot be parsed ({e})") from e
    if version > FORMAT_VERSION:
        raise _corrupt(
            json_path, f"format version {version} is newer than this xretrieve ({FORMAT_VERSION})"
        )
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(index_path), flags)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise _corrupt(
            index_path, f"not a readable FAISS index (truncated or damaged: {reason})"
        ) from e
    if index.ntotal != meta.get("ntotal") or index.d != meta.get("d") or index.d != plan.d:
        raise _corrupt(
            index_path,
            f"holds {index.ntotal} x {index.d} vectors but its sidecar says {meta.get('ntotal')} x {meta.get('d')}",
        )
    rescorer = _read_rescorer(meta.get("rescore"), rescore_path, (index.ntotal, index.d), mmap=mmap)
    if plan.needs_rescore and rescorer is None:
        raise _corrupt(
            json_path, f"plan {plan.kind} re-scores but no re-scoring vectors are recorded"
        )
    return BuiltIndex(index=index, plan=plan, rescorer=rescorer, params=params)


def _read_rescorer(
    info: dict[str, Any] | None, path: Path, shape: tuple[int, int], *, mmap: bool
) -> Rescorer | None:
    if info is None:
        return None
    try:
        codes = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as e:
        raise _corrupt(path, "the re-scoring vectors are missing") from e
    except (OSError, ValueError, EOFError) as e:
        raise _corrupt(path, f"the re-scoring vectors cannot be read ({e})") from e
    kind = info.get("kind")
    if kind != "fp16" or codes.dtype != np.float16 or codes.shape != shape:
        raise _corrupt(
            path, f"re-scoring vectors are {codes.dtype} {codes.shape}, expected {kind} {shape}"
        )
    return Rescorer(kind="fp16", codes=codes)
