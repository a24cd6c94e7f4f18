"""A shard index on disk: `write_index(built, "x.faiss")` writes three files, each atomically::

    x.faiss               the FAISS index (always CPU)
    x.faiss.json          plan, tuned search parameters, re-scoring layout, format version
    x.faiss.rescore.npy   re-scoring vectors (only for plans that re-score)

The index file is written last, so a present index file means its sidecars are complete;
`read_index` checks the three against each other and reports any damage as
`IndexCorruptError`.

`read_index(..., mmap=True)` maps the bulk of the file instead of reading it: the inverted
lists of IVF-Flat and IVF-SQ (`faiss.IO_FLAG_MMAP`), the codes of Flat and HNSW storage
(`IO_FLAG_MMAP_IFC`) and the re-scoring vectors; IVF-PQ fast-scan lists are read (FAISS
cannot map them). The file is checked against its size before it is mapped, exactly as before
it is read. A mapped file must never change in place while mapped (the store only replaces
files by rename and removes them by unlink, which leave a mapping intact).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xretrieve._fs import atomic_write
from xretrieve.errors import IndexCorruptError, IndexNotFoundError
from xretrieve.store.ann.build import BuiltIndex, Rescorer, TunedParams
from xretrieve.store.ann.gpu import to_cpu
from xretrieve.store.ann.plan import IndexPlan
from xretrieve.store.filecheck import check_faiss_file, check_npy_file

__all__ = ["FORMAT_VERSION", "index_files", "mmap_flags", "read_index", "write_index"]

FORMAT_VERSION = 1
_SIDE_JSON = ".json"
_SIDE_RESCORE = ".rescore.npy"
# A sidecar holds a plan and a few parameters: a few hundred bytes.
_SIDECAR_MAX_BYTES = 1 << 20
# Plans whose inverted lists FAISS maps (OnDiskInvertedLists over the file's own lists), and
# plans whose codes it maps in place (IndexFlatCodes storage). The two flags do not combine.
_MMAP_LISTS = frozenset({"ivf-flat", "ivf-sq8"})
_MMAP_CODES = frozenset({"flat", "hnsw"})


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


def mmap_flags(plan: IndexPlan) -> int:
    """The FAISS read flags that map `plan`'s bulk from the file (0 when FAISS cannot)."""
    if plan.kind in _MMAP_LISTS:
        return int(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    if plan.kind in _MMAP_CODES:
        return int(faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    return 0


def _corrupt(path: Path, reason: str) -> IndexCorruptError:
    return IndexCorruptError(f"{path}: {reason}; the index must be rebuilt from scratch")


def read_index(path: str | os.PathLike[str], *, mmap: bool = False) -> BuiltIndex:
    """Read an index written by `write_index` on the CPU; `mmap=True` maps what FAISS can map."""
    index_path, json_path, rescore_path = index_files(path)
    if not index_path.is_file():
        raise IndexNotFoundError(f"{index_path}: no FAISS index file there")
    try:
        if json_path.stat().st_size > _SIDECAR_MAX_BYTES:
            raise ValueError(f"a sidecar of {json_path.stat().st_size} bytes")
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        plan = IndexPlan.from_dict(meta["plan"])
        params = TunedParams.from_dict(meta["params"]) if meta.get("params") else None
        version = int(meta["format_version"])
    except FileNotFoundError as e:
        raise _corrupt(json_path, "the index sidecar is missing") from e
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise _corrupt(json_path, f"the index sidecar cannot be parsed ({e})"[:300]) from e
    if version > FORMAT_VERSION:
        raise _corrupt(
            json_path, f"format version {version} is newer than this xretrieve ({FORMAT_VERSION})"
        )
    # What the file claims against its size, before FAISS allocates from the claim.
    check_faiss_file(index_path)
    flags = mmap_flags(plan) if mmap else 0
    try:
        try:
            index = faiss.read_index(str(index_path), flags)
        except RuntimeError:
            if not flags:
                raise
            # A file system that cannot map (or a layout FAISS will not map): read it instead.
            index = faiss.read_index(str(index_path), 0)
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
    if not path.is_file():
        raise _corrupt(path, "the re-scoring vectors are missing")
    check_npy_file(path, dtype="<f2", ndim=2, shape=shape, what="re-scoring vectors")
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
