"""A built shard index: train on a bounded sample, add rows 0..n-1, keep re-scoring vectors.

Vectors are float32, L2-normalised, compared by inner product; ids are the row numbers
0..n-1 of the shard. Compressed plans keep float16 copies of the vectors (`Rescorer`) so
that searches can re-score their candidates to true inner products.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.store.ann.gpu import UseGpu, to_cpu, to_device, use_gpu_now
from xretrieve.store.ann.plan import KMEANS_ITER, IndexPlan, RescoreKind, extract_ivf

__all__ = [
    "BuiltIndex",
    "Rescorer",
    "TunedParams",
    "as_vectors",
    "build_index",
    "default_params",
    "on_device",
    "reconstruct_vectors",
    "with_params",
]


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


def as_vectors(x: object, *, d: int | None = None, what: str = "vectors") -> Vectors:
    """`x` as a C-contiguous float32 (n, d) array, or `InputError` saying what is wrong."""
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
    x = as_vectors(vectors, d=plan.d)
    try:
        index = faiss.index_factory(plan.d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"FAISS cannot build {plan.factory!r}: {e}") from e
    gpu = use_gpu_now(use_gpu)
    ivf = extract_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.niter = KMEANS_ITER
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
    ivf = extract_ivf(index)
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


def on_device(built: BuiltIndex, *, use_gpu: UseGpu = "auto") -> BuiltIndex:
    """`built` moved to the GPUs when the switch says so (e.g. after `read_index`)."""
    if built.on_gpu:
        return built
    index, on_gpu = to_device(built.index, use_gpu=use_gpu)
    return replace(built, index=index, on_gpu=on_gpu)
