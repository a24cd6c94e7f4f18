"""Store: an index on disk — a versioned manifest over shards of FAISS + Parquet files.

Layout (format v1)::

    INDEX/
      manifest.json               written last, atomically: what readers trust
      shards/<shard>.g<N>.faiss   one FAISS index per shard (ids = row numbers)
      shards/<shard>.g<N>.parquet one metadata row per vector, same order
      .lock                       held by the one writer

Every file is written to a temporary name, fsynced and renamed, and shard files carry the
generation that wrote them, so a reader that loaded generation N never sees a file of N+1
half-written, and a crash before the manifest is renamed leaves generation N intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from xretrieve import ann
from xretrieve.errors import (
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStoreError,
)
from xretrieve.types import Modality, Vectors

__all__ = [
    "FORMAT_VERSION",
    "METADATA_SCHEMA",
    "LoadedShard",
    "Manifest",
    "ShardFile",
    "ShardInfo",
    "ShardPayload",
    "atomic_write",
    "load_shard",
    "lock_index",
    "read_manifest",
    "write_generation",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
LOCK = ".lock"

#: One row per item; `row` is the vector id inside the shard's FAISS index.
METADATA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # relative to the indexed folder, POSIX separators
        ("modality", pa.string()),  # image | text | audio
        ("caption", pa.string()),  # text items: the caption; images: their first sidecar caption
        ("image_path", pa.string()),  # text items from a sidecar: the image they describe
        ("line", pa.int32()),  # text items: line number in their caption file
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),  # microseconds: what Python datetimes hold
        ("content_hash", pa.string()),  # sha256 of the file (images) or of the caption text
        ("shard", pa.string()),
        ("row", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ShardFile:
    """One file of a shard, with what a reader checks it against."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardInfo:
    """A shard as the manifest records it."""

    name: str
    modality: Modality
    rows: int
    index_file: ShardFile
    meta_file: ShardFile
    index_type: str
    ann: dict[str, Any] = field(default_factory=dict)  # search params and measured recall
    partition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The one file that says what an index holds."""

    format_version: int
    generation: int
    root: str
    model: dict[str, Any]
    dim: int
    metric: str
    shards: tuple[ShardInfo, ...]
    created_at: float
    updated_at: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def rows_by_modality(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.modality] = out.get(s.modality, 0) + s.rows
        return out

    def to_json(self) -> str:
        d = asdict(self)
        d = {"format": "xretrieve-index", **d}
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, where: object = MANIFEST) -> Manifest:
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != "xretrieve-index":
                raise ValueError("not an xretrieve manifest")
            version = int(d["format_version"])
            if version > FORMAT_VERSION:
                raise IndexStoreError(
                    f"{where}: index format v{version} is newer than this xretrieve reads "
                    f"(v{FORMAT_VERSION}); upgrade xretrieve"
                )
            shards = tuple(
                ShardInfo(
                    **{
                        **s,
                        "index_file": ShardFile(**s["index_file"]),
                        "meta_file": ShardFile(**s["meta_file"]),
                    }
                )
                for s in d["shards"]
            )
            return cls(
                format_version=version,
                generation=int(d["generation"]),
                root=str(d["root"]),
                model=dict(d["model"]),
                dim=int(d["dim"]),
                metric=str(d["metric"]),
                shards=shards,
                created_at=float(d["created_at"]),
                updated_at=float(d["updated_at"]),
                stats=dict(d.get("stats", {})),
            )
        except IndexStoreError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise IndexCorruptError(
                f"{where} is damaged ({type(e).__name__}: {e}); rebuild the index with `xretrieve index --full`"
            ) from e


@dataclass(frozen=True)
class ShardPayload:
    """What the indexer hands the store for one shard: vectors and aligned metadata."""

    modality: Modality
    vectors: Vectors
    metadata: pa.Table
    partition: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedShard:
    """A shard read back: its ANN index and its metadata table."""

    info: ShardInfo
    index: ann.BuiltIndex
    metadata: pa.Table


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _describe(path: Path) -> ShardFile:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return ShardFile(name=path.name, bytes=path.stat().st_size, sha256=h.hexdigest())


@contextlib.contextmanager
def lock_index(index_dir: Path) -> Iterator[None]:
    """Hold the index's writer lock; a second writer gets `IndexLockedError` at once."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise IndexLockedError(
                    f"{index_dir} is being written by another process; wait for it to finish"
                ) from e
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate an index's manifest."""
    d = Path(index_dir).expanduser()
    mpath = d / MANIFEST
    if not mpath.is_file():
        if d.is_dir() and any(d.iterdir()):
            raise IndexNotFoundError(f"{d} is not an xretrieve index (no {MANIFEST})")
        raise IndexNotFoundError(
            f"no index at {d}; build one with `xretrieve index FOLDER --index {d}`"
        )
    try:
        text = mpath.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{mpath} cannot be read: {e}") from e
    return Manifest.from_json(text, where=mpath)


def _shard_names(modality: str, count: int) -> list[str]:
    return [f"{modality}-{i:05d}" for i in range(count)]


def _write_shard(
    shard_dir: Path,
    name: str,
    generation: int,
    payload: ShardPayload,
    plan_for: Callable[[int, int], ann.IndexPlan],
) -> ShardInfo:
    n = len(payload.vectors)
    if payload.metadata.num_rows != n:
        raise IndexStoreError(
            f"shard {name}: {n} vectors but {payload.metadata.num_rows} metadata rows"
        )
    meta = payload.metadata
    meta = meta.set_column(
        meta.schema.get_field_index("shard"), "shard", pa.array([name] * n, pa.string())
    )
    meta = meta.set_column(
        meta.schema.get_field_index("row"), "row", pa.array(range(n), pa.int64())
    )
    plan = plan_for(n, payload.vectors.shape[1])
    built = ann.build_index(payload.vectors, plan)
    tuned = ann.tune(built, payload.vectors)
    base = f"{name}.g{generation}"
    index_path = shard_dir / f"{base}.faiss"
    meta_path = shard_dir / f"{base}.parquet"
    ann.write_index(built, index_path, params=tuned)
    atomic_write(meta_path, lambda tmp: pq.write_table(meta, tmp, compression="zstd"))
    return ShardInfo(
        name=name,
        modality=payload.modality,
        rows=n,
        index_file=_describe(index_path),
        meta_file=_describe(meta_path),
        index_type=plan.kind,
        ann=tuned.to_dict(),
        partition=dict(payload.partition),
    )


def write_generation(
    index_dir: str | os.PathLike[str],
    *,
    root: str,
    model: dict[str, Any],
    dim: int,
    payloads: Sequence[ShardPayload],
    stats: dict[str, Any] | None = None,
    max_rows_per_shard: int = 1_000_000,
    index_type: str | None = None,
    keep: Sequence[ShardInfo] = (),
) -> Manifest:
    """Write a new generation of the index: shard files first, the manifest last.

    `keep` lists shards of the current generation to carry over unchanged (their files stay);
    `payloads` become new shards, numbered after the kept ones. The caller holds
    `lock_index`. Shard files that the new manifest no longer names are removed only after
    the new manifest is in place.
    """
    d = Path(index_dir).expanduser()
    shard_dir = d / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    previous: Manifest | None
    try:
        previous = read_manifest(d)
    except IndexStoreError:
        previous = None
    generation = (previous.generation + 1) if previous else 1
    created = previous.created_at if previous else time.time()

    def plan_for(n: int, dim_: int) -> ann.IndexPlan:
        return ann.plan_index(n, dim_, index_type=index_type)

    shards: list[ShardInfo] = list(keep)
    counters: dict[str, int] = {}
    for info in keep:
        number = int(info.name.rsplit("-", 1)[1])
        counters[info.modality] = max(counters.get(info.modality, 0), number + 1)
    for payload in payloads:
        for start in range(0, max(1, len(payload.vectors)), max_rows_per_shard):
            part = _slice_payload(payload, start, start + max_rows_per_shard)
            if len(part.vectors) == 0:
                continue
            i = counters.get(part.modality, 0)
            counters[part.modality] = i + 1
            name = _shard_names(part.modality, i + 1)[i]
            shards.append(_write_shard(shard_dir, name, generation, part, plan_for))
    now = time.time()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        generation=generation,
        root=root,
        model=model,
        dim=dim,
        metric="inner_product",
        shards=tuple(shards),
        created_at=created,
        updated_at=now,
        stats=dict(stats or {}),
    )
    atomic_write(d / MANIFEST, lambda tmp: _write_text(tmp, manifest.to_json()))
    _collect_garbage(shard_dir, manifest)
    return manifest


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _slice_payload(p: ShardPayload, start: int, stop: int) -> ShardPayload:
    if start == 0 and stop >= len(p.vectors):
        return p
    return replace(p, vectors=p.vectors[start:stop], metadata=p.metadata.slice(start, stop - start))


def _collect_garbage(shard_dir: Path, manifest: Manifest) -> None:
    keep = {s.index_file.name for s in manifest.shards} | {
        s.meta_file.name for s in manifest.shards
    }
    for f in shard_dir.iterdir():
        referenced = f.name in keep or any(f.name.startswith(k + ".") for k in keep)
        if not referenced and not f.name.startswith("."):
            with contextlib.suppress(OSError):
                f.unlink()


def _check_file(path: Path, expected: ShardFile, *, verify: bool) -> None:
    if not path.is_file():
        raise IndexCorruptError(
            f"{path} is missing; rebuild the index with `xretrieve index --full`"
        )
    size = path.stat().st_size
    if size != expected.bytes:
        raise IndexCorruptError(
            f"{path} has {size} bytes, the manifest says {expected.bytes}: the file is damaged; "
            "rebuild the index with `xretrieve index --full`"
        )
    if verify and _describe(path).sha256 != expected.sha256:
        raise IndexCorruptError(f"{path} does not match its checksum: the file is damaged")


def load_shard(
    index_dir: str | os.PathLike[str], info: ShardInfo, *, verify: bool = False
) -> LoadedShard:
    """Read one shard's index and metadata, checking them against the manifest."""
    shard_dir = Path(index_dir).expanduser() / SHARDS_DIR
    index_path = shard_dir / info.index_file.name
    meta_path = shard_dir / info.meta_file.name
    _check_file(index_path, info.index_file, verify=verify)
    _check_file(meta_path, info.meta_file, verify=verify)
    built = ann.read_index(index_path)
    try:
        meta = pq.read_table(meta_path)
    except (pa.ArrowException, OSError) as e:
        raise IndexCorruptError(f"{meta_path} cannot be read as Parquet: {e}") from e
    if built.ntotal != info.rows or meta.num_rows != info.rows:
        raise IndexCorruptError(
            f"shard {info.name}: manifest says {info.rows} rows, index has {built.ntotal}, "
            f"metadata has {meta.num_rows}; rebuild the index with `xretrieve index --full`"
        )
    return LoadedShard(info=info, index=built, metadata=meta)
