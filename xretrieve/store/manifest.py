"""Store: an index on disk — a versioned manifest over shards of FAISS + Parquet files.

Layout (format v1)::

    INDEX/
      manifest.json               written last, atomically: what readers trust
      shards/<shard>.g<N>.faiss   one FAISS index per shard (ids = row numbers)
      shards/<shard>.g<N>.parquet one metadata row per vector, same order
      shards/<shard>.g<N>.deleted.npy  rows of the shard that no longer count (tombstones)
      readers/<id>.pin            one per live `Reader`: the files of the generation it reads
      .lock                       held by the one writer

Every file is written to a temporary name, fsynced and renamed, and shard files carry the
generation that wrote them, so a reader that loaded generation N never sees a file of N+1
half-written, and a crash before the manifest is renamed leaves generation N intact.

A `Reader` keeps its generation for as long as it lives, however many generations land
meanwhile: it *pins* its files (a small file under `readers/` naming them, held with a shared
`flock`), and the writer removes a file only when no live pin names it. A pin whose process
is gone is unlocked, so the next writer deletes it. The files of generation N also stay until
N+2 lands, which covers a reader between reading the manifest and pinning it. Where no pin
can be written (a read-only index), a `Reader` that finds a file gone re-reads the manifest
and starts over on the new generation.

A writer (holding `lock_index`) commits in steps with a `Writer`: `write_shard` any number of
times, then `commit` the shard list; each commit is one new generation.

Deleting or replacing a few rows of a big shard does not rewrite it: the new generation names
the same two files plus a list of deleted row numbers, which searches skip. A manifest that
uses such lists says format 2, so an older xretrieve refuses it instead of showing the rows.

Metadata columns added after v1 (`folder`, `year`, `path_bytes`) are additive: v1 shards are
filled in on read (`upgrade_metadata`), and readers of v1 ignore the extra columns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xretrieve._fs import atomic_write
from xretrieve._types import Ids, Modality, Vectors
from xretrieve.errors import (
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStoreError,
    ShardMissingError,
)
from xretrieve.store import ann

__all__ = [
    "FORMAT_VERSION",
    "METADATA_SCHEMA",
    "PARTITION_KEYS",
    "LoadedShard",
    "Manifest",
    "Reader",
    "ShardFile",
    "ShardInfo",
    "ShardMissingError",
    "ShardPayload",
    "Writer",
    "atomic_write",
    "kill_point",
    "load_shard",
    "lock_index",
    "partition_stats",
    "pinned_files",
    "read_deleted",
    "read_manifest",
    "read_metadata",
    "top_folder",
    "upgrade_metadata",
    "write_generation",
]

FORMAT_VERSION = 2
#: The format a manifest without deleted-row lists is written in (readable by older versions).
_PLAIN_FORMAT = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
READERS_DIR = "readers"
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
        ("folder", pa.string()),  # top-level folder of `path`; "" for files at the root
        ("year", pa.int32()),  # UTC year of `mtime`
        # The exact bytes of `path` when they are not valid UTF-8 (then `path` shows them as
        # \xNN); null otherwise. os.fsdecode(path_bytes) gives the name back.
        ("path_bytes", pa.binary()),
        # Audio items: length in seconds, the file's own sample rate and channel count.
        ("duration", pa.float32()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
    ]
)
#: Per-file facts found by decoding, by modality; a row holds only its modality's.
FACT_COLUMNS = ("width", "height", "duration", "sample_rate", "channels")
#: What `--shard-by` accepts: a metadata column to partition shards on, or none.
PARTITION_KEYS = ("none", "folder", "year")
#: Columns whose min/max each shard records in `ShardInfo.partition["stats"]`.
STATS_COLUMNS = ("mtime", "width", "height", "bytes", "year", "duration")


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
    # {"key": "none"|"folder"|"year", "value": <value or None>,
    #  "stats": {column: {"min": ..., "max": ...}}}  (mtime as ISO strings)
    partition: dict[str, Any] = field(default_factory=dict)
    # Rows that no longer count (sorted int64 row numbers in a .npy file), and how many.
    deleted: ShardFile | None = None
    deleted_rows: int = 0

    @property
    def live_rows(self) -> int:
        """Rows a search can return: all rows less the deleted ones."""
        return self.rows - self.deleted_rows

    def files(self) -> tuple[ShardFile, ...]:
        """The shard's files on disk."""
        return (self.index_file, self.meta_file, *((self.deleted,) if self.deleted else ()))


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
        """Items in the index (deleted rows not counted)."""
        return sum(s.live_rows for s in self.shards)

    def rows_by_modality(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.modality] = out.get(s.modality, 0) + s.live_rows
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
                        "deleted": ShardFile(**s["deleted"]) if s.get("deleted") else None,
                        "partition": s.get("partition") or _UNKNOWN_PARTITION,
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


# Shards written before partitions existed: one partition, no statistics (so never pruned).
_UNKNOWN_PARTITION: dict[str, Any] = {"key": "none", "value": None, "stats": {}}


@dataclass(frozen=True)
class ShardPayload:
    """What the indexer hands the store for one shard: vectors and aligned metadata."""

    modality: Modality
    vectors: Vectors
    metadata: pa.Table
    partition: dict[str, Any] = field(default_factory=dict)  # {"key": ..., "value": ...}


@dataclass
class LoadedShard:
    """A shard read back: its ANN index, its metadata table and its deleted rows."""

    info: ShardInfo
    index: ann.BuiltIndex
    metadata: pa.Table
    deleted: Ids = field(default_factory=lambda: np.empty(0, np.int64))


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


def shard_number(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat()
    return v


def partition_stats(meta: pa.Table) -> dict[str, dict[str, Any]]:
    """Min and max of each `STATS_COLUMNS` column (nulls ignored; mtime as ISO 8601 strings)."""
    out: dict[str, dict[str, Any]] = {}
    for col in STATS_COLUMNS:
        if col not in meta.column_names:
            continue
        mm = pc.min_max(meta.column(col)).as_py()
        out[col] = {"min": _iso(mm["min"]), "max": _iso(mm["max"])}
    return out


def upgrade_metadata(meta: pa.Table) -> pa.Table:
    """Bring a shard's metadata table to `METADATA_SCHEMA`, deriving columns older shards lack."""
    if meta.schema.equals(METADATA_SCHEMA):
        return meta
    n = meta.num_rows
    cols: list[pa.Array | pa.ChunkedArray] = []
    for fld in METADATA_SCHEMA:
        if fld.name in meta.column_names:
            cols.append(meta.column(fld.name).cast(fld.type))
        elif fld.name == "folder" and "path" in meta.column_names:
            paths = meta.column("path").to_pylist()
            cols.append(pa.array([top_folder(p) if p is not None else None for p in paths]))
        elif fld.name == "year" and "mtime" in meta.column_names:
            cols.append(pc.year(meta.column("mtime")).cast(pa.int32()))
        else:
            cols.append(pa.nulls(n, fld.type))
    return pa.Table.from_arrays(cols, schema=METADATA_SCHEMA)


def top_folder(rel: str) -> str:
    """The first component of a relative POSIX path, or "" for a file at the root."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


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
    meta = upgrade_metadata(payload.metadata)
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
    # Parquet first: a shard is only named by a manifest once both files are complete.
    atomic_write(meta_path, lambda tmp: pq.write_table(meta, tmp, compression="zstd"))
    kill_point("shard-parquet")
    ann.write_index(built, index_path, params=tuned)
    partition = {
        "key": payload.partition.get("key", "none"),
        "value": payload.partition.get("value"),
        "stats": partition_stats(meta),
    }
    return ShardInfo(
        name=name,
        modality=payload.modality,
        rows=n,
        index_file=_describe(index_path),
        meta_file=_describe(meta_path),
        index_type=plan.kind,
        ann=tuned.to_dict(),
        partition=partition,
    )


def _current(d: Path) -> Manifest | None:
    try:
        return read_manifest(d)
    except IndexNotFoundError:
        return None
    except IndexStoreError:
        return None  # a damaged manifest: the next generation replaces it


class Writer:
    """Writes shards and commits generations of one index; the caller holds `lock_index`.

    Each `commit` lands one new generation whose manifest names exactly the shards given;
    shard files written since the last commit carry that generation's number.
    """

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(index_dir).expanduser()
        self.shard_dir = self.dir / SHARDS_DIR
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = _current(self.dir)
        self._next: dict[str, int] = {}
        for info in self.manifest.shards if self.manifest else ():
            self._bump(info.name, info.modality)

    @property
    def generation(self) -> int:
        """The generation the next commit writes."""
        return (self.manifest.generation if self.manifest else 0) + 1

    def _bump(self, name: str, modality: str) -> None:
        self._next[modality] = max(self._next.get(modality, 0), shard_number(name) + 1)

    def new_name(self, modality: str) -> str:
        """A shard name never used in this index's current manifest or by this writer."""
        i = self._next.get(modality, 0)
        self._next[modality] = i + 1
        return f"{modality}-{i:05d}"

    def write_shard(
        self,
        payload: ShardPayload,
        *,
        max_rows: int = 1_000_000,
        index_type: str | None = None,
    ) -> list[ShardInfo]:
        """Write `payload` as one or more shards of at most `max_rows` rows (not yet committed)."""
        if max_rows <= 0:
            raise IndexStoreError(f"max rows per shard must be positive, got {max_rows}")

        def plan_for(n: int, dim_: int) -> ann.IndexPlan:
            return ann.plan_index(n, dim_, index_type=index_type)

        out: list[ShardInfo] = []
        for start in range(0, len(payload.vectors), max_rows):
            part = _slice_payload(payload, start, start + max_rows)
            name = self.new_name(part.modality)
            out.append(_write_shard(self.shard_dir, name, self.generation, part, plan_for))
            kill_point("shard-written")
        return out

    def write_deletions(self, info: ShardInfo, rows: Ids) -> ShardInfo:
        """`info` with `rows` (and the rows it already had deleted) deleted, not yet committed.

        The shard's own files stay; only a small list of row numbers is written.
        """
        old = read_deleted(self.dir, info)
        merged = np.union1d(old, np.asarray(rows, np.int64)).astype(np.int64)
        if len(merged) == len(old):
            return info
        if len(merged) and (merged[0] < 0 or merged[-1] >= info.rows):
            raise IndexStoreError(f"shard {info.name}: deleted rows out of range")
        path = self.shard_dir / f"{info.name}.g{self.generation}.deleted.npy"
        atomic_write(path, lambda tmp: _save_rows(tmp, merged))
        return replace(info, deleted=_describe(path), deleted_rows=len(merged))

    def commit(
        self,
        shards: Sequence[ShardInfo],
        *,
        root: str,
        model: dict[str, Any],
        dim: int,
        stats: dict[str, Any] | None = None,
    ) -> Manifest:
        """Land a new generation naming `shards`: the manifest is replaced last, atomically.

        Files that neither this generation nor the one it replaces name are then removed, so
        a reader of the previous manifest can still open its shards.
        """
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            raise IndexStoreError(f"duplicate shard names in one generation: {sorted(names)}")
        previous = self.manifest
        now = time.time()
        manifest = Manifest(
            format_version=FORMAT_VERSION if any(s.deleted for s in shards) else _PLAIN_FORMAT,
            generation=self.generation,
            root=root,
            model=model,
            dim=dim,
            metric="inner_product",
            shards=tuple(shards),
            created_at=previous.created_at if previous else now,
            updated_at=now,
            stats=dict(stats or {}),
        )
        kill_point("before-manifest")
        atomic_write(self.dir / MANIFEST, lambda tmp: _write_text(tmp, manifest.to_json()))
        kill_point("after-manifest")
        self.manifest = manifest
        _collect_garbage(self.shard_dir, manifest, previous)
        return manifest


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
    `lock_index`.
    """
    w = Writer(index_dir)
    shards: list[ShardInfo] = list(keep)
    for info in keep:
        w._bump(info.name, info.modality)
    for payload in payloads:
        shards += w.write_shard(payload, max_rows=max_rows_per_shard, index_type=index_type)
    return w.commit(shards, root=root, model=model, dim=dim, stats=stats)


def _save_rows(path: Path, rows: Ids) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, rows, allow_pickle=False)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _slice_payload(p: ShardPayload, start: int, stop: int) -> ShardPayload:
    if start == 0 and stop >= len(p.vectors):
        return p
    return replace(p, vectors=p.vectors[start:stop], metadata=p.metadata.slice(start, stop - start))


def _shard_files(manifest: Manifest) -> set[str]:
    return {f.name for s in manifest.shards for f in s.files()}


def _collect_garbage(shard_dir: Path, manifest: Manifest, previous: Manifest | None) -> None:
    keep = _shard_files(manifest) | (_shard_files(previous) if previous else set())
    keep |= pinned_files(shard_dir.parent)
    for f in shard_dir.iterdir():
        referenced = f.name in keep or any(f.name.startswith(k + ".") for k in keep)
        if not referenced and not f.name.startswith("."):
            with contextlib.suppress(OSError):
                f.unlink()
        elif f.name.startswith(".") and f.name.endswith(".tmp"):
            # A temporary file left by a killed writer (we hold the lock: nobody else writes).
            with contextlib.suppress(OSError):
                f.unlink()


def kill_point(point: str) -> None:
    """Test hook: with XRETRIEVE_KILL_AT=point[:n], SIGKILL this process at the n-th such point."""
    spec = os.environ.get("XRETRIEVE_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _hook_counts[point] = _hook_counts.get(point, 0) + 1
    if _hook_counts[point] >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_hook_counts: dict[str, int] = {}


def pinned_files(index_dir: Path) -> set[str]:
    """Shard files named by the pins of live readers; pins of dead processes are removed."""
    names: set[str] = set()
    pins = index_dir / READERS_DIR
    for pin in pins.iterdir() if pins.is_dir() else ():
        try:
            fd = os.open(pin, os.O_RDONLY)
        except OSError:
            continue  # released meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its reader is alive
                if pin.suffix == ".pin":  # (a temporary is still being written: skipped)
                    text = os.read(fd, 1 << 24).decode("utf-8", "replace")
                    with contextlib.suppress(ValueError):
                        names |= {str(n) for n in json.loads(text)}
            else:
                with contextlib.suppress(OSError):
                    pin.unlink()  # nobody holds it: its reader is gone
        finally:
            os.close(fd)
    return names


class _Pin:
    """A reader's claim on the files of one generation: `readers/<id>.pin` under a shared flock.

    The lock lives as long as the open file, so a crashed reader releases it by itself.
    """

    def __init__(self, index_dir: Path, manifest: Manifest) -> None:
        self.held = False
        pins = index_dir / READERS_DIR
        try:
            pins.mkdir(exist_ok=True)
            name = f"{os.getpid()}-{os.urandom(6).hex()}"
            tmp = pins / f".{name}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return  # a read-only index: the reader falls back to re-reading the manifest
        try:
            # Locked before anything else: a writer removes only unlocked pins and temporaries.
            # The lock stays with the file through the rename.
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, json.dumps(sorted(_shard_files(manifest))).encode())
            os.replace(tmp, pins / f"{name}.pin")
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self.held = True
        # Released when the pin is dropped or, at the latest, when the interpreter exits.
        self._release = weakref.finalize(self, _unpin, fd, pins / f"{name}.pin")

    def release(self) -> None:
        if self.held:
            self._release()
            self.held = False


def _unpin(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)  # closing releases the flock


def _check_file(path: Path, expected: ShardFile, *, verify: bool) -> None:
    if not path.is_file():
        raise ShardMissingError(
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


def read_metadata(
    index_dir: str | os.PathLike[str], info: ShardInfo, *, columns: Sequence[str] | None = None
) -> pa.Table:
    """One shard's metadata table (only `columns` when given), without loading its vectors."""
    meta_path = Path(index_dir).expanduser() / SHARDS_DIR / info.meta_file.name
    _check_file(meta_path, info.meta_file, verify=False)
    try:
        if columns is None:
            return upgrade_metadata(pq.read_table(meta_path))
        # ParquetFile, not read_table: no pyarrow.dataset import (~1 s) on a no-op re-run.
        pf = pq.ParquetFile(meta_path)
        have = set(pf.schema_arrow.names)
        return pf.read(columns=[c for c in columns if c in have])
    except (pa.ArrowException, OSError) as e:
        raise IndexCorruptError(f"{meta_path} cannot be read as Parquet: {e}") from e


def read_deleted(
    index_dir: str | os.PathLike[str], info: ShardInfo, *, verify: bool = False
) -> Ids:
    """The sorted row numbers deleted from a shard (empty when none)."""
    if info.deleted is None:
        return np.empty(0, np.int64)
    path = Path(index_dir).expanduser() / SHARDS_DIR / info.deleted.name
    _check_file(path, info.deleted, verify=verify)
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IndexCorruptError(f"{path} cannot be read: {e}") from e
    if rows.dtype != np.int64 or rows.ndim != 1 or len(rows) != info.deleted_rows:
        raise IndexCorruptError(f"{path} does not hold {info.deleted_rows} row numbers")
    return rows


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
        # One chunk per column: `take` on a many-chunk column costs ~20 ms at 1M rows
        # (measured), on one chunk microseconds.
        meta = upgrade_metadata(pq.read_table(meta_path)).combine_chunks()
    except (pa.ArrowException, OSError) as e:
        raise IndexCorruptError(f"{meta_path} cannot be read as Parquet: {e}") from e
    if built.ntotal != info.rows or meta.num_rows != info.rows:
        raise IndexCorruptError(
            f"shard {info.name}: manifest says {info.rows} rows, index has {built.ntotal}, "
            f"metadata has {meta.num_rows}; rebuild the index with `xretrieve index --full`"
        )
    deleted = read_deleted(index_dir, info, verify=verify)
    return LoadedShard(info=info, index=built, metadata=meta, deleted=deleted)


class Reader:
    """A consistent view of an index for searching: every shard it returns is of one generation.

    The reader pins its generation's files (see the module notes), so it keeps that view
    however many generations a writer lands meanwhile, until `refresh()` moves it to the
    newest or `close()` lets the files go. Shards load lazily. Without a pin (read-only
    index), a reader that finds a file gone re-reads the manifest and serves the new
    generation.
    """

    def __init__(self, index_dir: str | os.PathLike[str], manifest: Manifest | None = None):
        self.dir = Path(index_dir).expanduser()
        self.manifest = manifest or read_manifest(self.dir)
        self._loaded: dict[str, LoadedShard] = {}
        self._pin: _Pin | None = None
        self._pin_current()

    def _pin_current(self) -> None:
        """Pin this reader's generation; if a writer removed its files first, move on."""
        for _ in range(5):
            old, self._pin = self._pin, _Pin(self.dir, self.manifest)
            if old is not None:
                old.release()
            shard_dir = self.dir / SHARDS_DIR
            if all((shard_dir / n).is_file() for n in _shard_files(self.manifest)):
                return
            m = read_manifest(self.dir)
            if m.generation == self.manifest.generation:
                return  # damaged, not replaced: loading reports which file
            self.manifest, self._loaded = m, {}

    @property
    def pinned(self) -> bool:
        """Whether this reader's files are protected from writers (False on a read-only index)."""
        return self._pin is not None and self._pin.held

    def refresh(self) -> bool:
        """Re-read the manifest; True if the generation changed (shards it still names stay
        loaded)."""
        m = read_manifest(self.dir)
        if m.generation == self.manifest.generation:
            return False
        live = {s.name: s.meta_file for s in m.shards}
        self._loaded = {k: v for k, v in self._loaded.items() if live.get(k) == v.info.meta_file}
        self.manifest = m
        self._pin_current()
        return True

    def close(self) -> None:
        """Release the pin: writers may then remove this generation's files."""
        if self._pin is not None:
            self._pin.release()
            self._pin = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shards(self, modality: str | None = None) -> list[LoadedShard]:
        """The shards holding `modality` (all when None), all from the same generation."""
        for _ in range(5):
            try:
                out = []
                for info in self.manifest.shards:
                    if modality is None or info.modality == modality:
                        if info.name not in self._loaded:
                            self._loaded[info.name] = load_shard(self.dir, info)
                        out.append(self._loaded[info.name])
                return out
            except ShardMissingError:
                if not self.refresh():
                    raise
        raise IndexStoreError(f"{self.dir} keeps changing under the reader; try again")
