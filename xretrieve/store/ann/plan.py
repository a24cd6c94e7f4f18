"""Choosing a shard's FAISS index: the plan (factory string, lists, re-scoring) for n x d vectors.

A plan depends on the shard's size and dimension alone (and an explicit index type or memory
budget), so the same vectors always get the same index; `estimate_bytes` says what it holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import faiss

from xretrieve.errors import InputError

__all__ = [
    "FLAT_MAX_N",
    "IVF_FLAT_MAX_N",
    "KINDS",
    "IndexPlan",
    "RescoreKind",
    "estimate_bytes",
    "extract_ivf",
    "graph_m",
    "plan_index",
]

#: Largest shard searched exactly: one query over 100k x 512 measured 7.3 ms on one core here,
#: so 20k stays near 1.5 ms while needing no training or tuning.
FLAT_MAX_N = 20_000
#: Largest shard kept as IVF-Flat (exact scores, full float32 codes) before codes are compressed.
IVF_FLAT_MAX_N = 300_000
KINDS = ("flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq", "opq")
RescoreKind = Literal["none", "fp16"]

_HNSW_M = 32
# Bytes per vector an IVF list spends on the stored int64 id.
_IVF_ID_BYTES = 8
# k-means wants >= 39 points per centroid; the sample cap and 10 iterations bound training
# to ~30 s for 1M x 512 on 2 cores (cost is linear in both) while recall at the tuned nprobe
# barely moves.
_TRAIN_PER_LIST = 40
_TRAIN_MAX = 1 << 17
KMEANS_ITER = 10


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
    ivf = extract_ivf(probe)
    nlist = int(ivf.nlist) if ivf is not None else 0
    hnsw_m = graph_m(probe)
    train = 0 if probe.is_trained else _train_size(n, nlist)
    return IndexPlan(
        kind="factory", factory=factory, n=n, d=d, nlist=nlist, hnsw_m=hnsw_m, train_size=train
    )


def extract_ivf(index: Any) -> Any | None:
    """The IVF layer under pre-transforms (OPQ) or refinement, or None for flat / HNSW."""
    return faiss.try_extract_index_ivf(index)


def graph_m(index: Any) -> int:
    """Neighbours per node of an HNSW index (0 for any other index)."""
    h = faiss.downcast_index(index)
    return int(h.hnsw.nb_neighbors(1)) if hasattr(h, "hnsw") else 0
