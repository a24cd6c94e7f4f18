"""FAISS indexes for one shard: choose, build, tune, search, (de)serialise, GPU switch.

Vectors are float32, L2-normalised, compared by inner product; ids are the row numbers
0..n-1 of the shard. Compressed indexes only propose candidates: a larger pool is re-scored
with float16 vectors kept beside the codes, or with the caller's own full-precision
vectors, so returned scores are true inner products (to float16 precision, ~1e-3).

One module a stage: `plan` (which index for n x d vectors), `build` (train, add, re-scoring
vectors), `tuning` (search parameters for a target recall), `topk` (search, re-score,
merge shards), `gpu` (the GPU switch), `disk` (the three files of an index). faiss is
imported here and nowhere else in xretrieve.
"""

from xretrieve.store.ann.build import (
    BuiltIndex,
    Rescorer,
    TunedParams,
    build_index,
    default_params,
    on_device,
    reconstruct_vectors,
    with_params,
)
from xretrieve.store.ann.disk import (
    FORMAT_VERSION,
    index_files,
    mmap_flags,
    read_index,
    write_index,
)
from xretrieve.store.ann.gpu import (
    UseGpu,
    faiss_gpu_count,
    to_cpu,
    to_device,
    use_gpu_now,
)
from xretrieve.store.ann.plan import (
    FLAT_MAX_N,
    IVF_FLAT_MAX_N,
    KINDS,
    IndexPlan,
    estimate_bytes,
    plan_index,
)
from xretrieve.store.ann.topk import merge_topk, rescore, search, search_shards
from xretrieve.store.ann.tuning import tune

__all__ = [
    "FLAT_MAX_N",
    "FORMAT_VERSION",
    "IVF_FLAT_MAX_N",
    "KINDS",
    "BuiltIndex",
    "IndexPlan",
    "Rescorer",
    "TunedParams",
    "UseGpu",
    "build_index",
    "default_params",
    "estimate_bytes",
    "faiss_gpu_count",
    "index_files",
    "merge_topk",
    "mmap_flags",
    "on_device",
    "plan_index",
    "read_index",
    "reconstruct_vectors",
    "rescore",
    "search",
    "search_shards",
    "to_cpu",
    "to_device",
    "tune",
    "use_gpu_now",
    "with_params",
    "write_index",
]
