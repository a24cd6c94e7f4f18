"""THE GPU switch: whether FAISS builds and searches on GPUs, and moving indexes there and back.

"auto" means whenever FAISS reports a GPU (never with faiss-cpu); an index type without a GPU
version stays on the CPU with a warning. Files are always written from a CPU copy. This module
knows faiss indexes only; `build.on_device` moves a `BuiltIndex`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any, Literal

import faiss

from xretrieve.errors import InputError

__all__ = [
    "UseGpu",
    "faiss_gpu_count",
    "faiss_gpu_problem",
    "to_cpu",
    "to_device",
    "use_gpu_now",
]

log = logging.getLogger(__name__)

UseGpu = bool | Literal["auto"]


#: A GPU flat search checked against the CPU's, run apart: FAISS aborts the whole process when
#: its wheel has no kernels for the GPU (PyPI's faiss-gpu-cu12 ships sm_70 and sm_80 only).
_GPU_PROBE = """
import faiss, numpy as np
x = np.random.default_rng(0).standard_normal((5000, 64), dtype=np.float32)
cpu = faiss.IndexFlatIP(64)
cpu.add(x)
gpu = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(64))
gpu.add(x)
assert (gpu.search(x[:64], 5)[1][:, 0] == cpu.search(x[:64], 5)[1][:, 0]).all(), "wrong top-1"
"""


def faiss_gpu_problem() -> str | None:
    """Why FAISS cannot search on a GPU here (probed in a child process), or None when it can."""
    if faiss_gpu_count() == 0:
        return "needs FAISS's GPU build (faiss-gpu-cu12) and a GPU"
    run = subprocess.run(
        [sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=300
    )
    if run.returncode == 0:
        return None
    last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
    return f"FAISS's GPU build cannot search on this GPU: {last[:200]}"


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
