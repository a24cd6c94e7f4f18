"""Reading an index: one generation at a time, checked against its manifest, pinned while read.

A `Reader` keeps its generation for as long as it lives, however many generations land
meanwhile: it *pins* its files (a small file under `readers/` naming them, held with a shared
`flock`), and the writer removes a file only when no live pin names it. A pin whose process
is gone is unlocked, so the next writer deletes it. The files of generation N also stay until
N+2 lands, which covers a reader between reading the manifest and pinning it. Where no pin
can be written (a read-only index), a `Reader` that finds a file gone re-reads the manifest
and starts over on the new generation.

Every file is checked against the size the manifest records (and, with `verify=True`, its
sha256) before it is used: a missing file is `ShardMissingError`, a damaged one
`IndexCorruptError`. Files are found under `shards/` without following a symlink (a linked
`shards/` or `readers/`, or a shard file that is a link, is damage), and arrays are checked
against their size before they are read (`filecheck`).

A shard whose FAISS file holds `mmap_min_bytes` or more (a `Reader` keyword, by default
`MMAP_MIN_BYTES`: 32 MiB) is memory-mapped, not read (`ann.read_index(mmap=True)`): opening a
10M-row index then costs its metadata and the IVF quantizers, and its lists stay in the page
cache, shared, instead of in the reader's own memory. The checks above run before the
mapping; shard files are never changed in place (a writer writes new names and unlinks old
ones), so a mapping never sees a file shrink.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xretrieve._threads import bounded_map, default_workers
from xretrieve._types import Ids
from xretrieve.errors import IndexCorruptError, IndexStoreError, ShardMissingError
from xretrieve.store import ann
from xretrieve.store.filecheck import check_npy_file, check_parquet_file
from xretrieve.store.manifest import (
    READERS_DIR,
    SHARDS_DIR,
    Manifest,
    ShardFile,
    ShardInfo,
    describe_file,
    read_manifest,
    upgrade_metadata,
)
from xretrieve.store.safety import PIN_FILE, check_plain_name, folder, open_dir, unlink_recorded

__all__ = [
    "MMAP_MIN_BYTES",
    "LoadedShard",
    "Reader",
    "load_shard",
    "pinned_files",
    "read_deleted",
    "read_metadata",
]


# Shards loaded at once: more threads than cores only add memory in flight.
_LOAD_THREADS = 8
#: FAISS files this large are memory-mapped when loaded (one IVF-SQ8 shard of ~60k x 512 rows):
#: below it, reading costs a few milliseconds and maps would only multiply small mappings.
MMAP_MIN_BYTES = 32 << 20


@dataclass
class LoadedShard:
    """A shard read back: its ANN index, its metadata table and its deleted rows."""

    info: ShardInfo
    index: ann.BuiltIndex
    metadata: pa.Table
    deleted: Ids = field(default_factory=lambda: np.empty(0, np.int64))


# ---------------------------------------------------------------------------------------------
# Pins


def pinned_files(index_dir: Path) -> set[str]:
    """Shard files named by the pins of live readers; pins of dead processes are removed."""
    names: set[str] = set()
    try:
        dfd = open_dir(index_dir, READERS_DIR)
    except FileNotFoundError:
        return names
    try:
        for pin in os.listdir(dfd):
            if not PIN_FILE.fullmatch(pin):
                continue  # not a name a reader makes: neither read nor removed
            try:
                fd = os.open(pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            except OSError:
                continue  # released meanwhile, or a link
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held: its reader is alive
                    if pin.endswith(".pin"):  # (a temporary is still being written: skipped)
                        text = os.read(fd, 1 << 24).decode("utf-8", "replace")
                        with contextlib.suppress(ValueError, RecursionError, TypeError):
                            names |= {str(n) for n in json.loads(text)}
                else:
                    unlink_recorded(dfd, pin, pattern=PIN_FILE)  # its reader is gone
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return names


class _Pin:
    """A reader's claim on the files of one generation: `readers/<id>.pin` under a shared flock.

    The lock lives as long as the open file, so a crashed reader releases it by itself.
    """

    def __init__(self, index_dir: Path, manifest: Manifest) -> None:
        self.held = False
        # A linked readers/ is damage (`IndexCorruptError`), never followed.
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        tmp = f".{name}.tmp"
        try:
            dfd = open_dir(index_dir, READERS_DIR, create=True)
        except OSError:
            return  # a read-only index: the reader falls back to re-reading the manifest
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        except OSError:
            os.close(dfd)
            return
        try:
            # Locked before anything else: a writer removes only unlocked pins and temporaries.
            # The lock stays with the file through the rename.
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, json.dumps(sorted(manifest.shard_files())).encode())
            os.replace(tmp, f"{name}.pin", src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            os.close(dfd)
            return
        self.held = True
        # Released when the pin is dropped or, at the latest, when the interpreter exits.
        self._release = weakref.finalize(self, _unpin, fd, dfd, f"{name}.pin")

    def release(self) -> None:
        if self.held:
            self._release()
            self.held = False


def _unpin(fd: int, dfd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dfd)
    os.close(fd)  # closing releases the flock
    os.close(dfd)


# ---------------------------------------------------------------------------------------------
# Shard files


def _shard_file(index_dir: str | os.PathLike[str], expected: ShardFile, *, verify: bool) -> Path:
    """The path of a shard file under `shards/`, checked against its manifest record."""
    shard_dir = Path(index_dir).expanduser() / SHARDS_DIR
    path = shard_dir / check_plain_name(expected.name)
    try:
        with folder(shard_dir.parent, SHARDS_DIR) as dfd:
            st = os.stat(expected.name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        raise ShardMissingError(
            f"{path} is missing; the index must be rebuilt from scratch"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise IndexCorruptError(f"index damaged: {path} is not a regular file (a link?)")
    size = st.st_size
    if size != expected.bytes:
        raise IndexCorruptError(
            f"{path} has {size} bytes, the manifest says {expected.bytes}: the file is damaged; "
            "the index must be rebuilt from scratch"
        )
    if verify and describe_file(path).sha256 != expected.sha256:
        raise IndexCorruptError(f"{path} does not match its checksum: the file is damaged")
    return path


def read_metadata(
    index_dir: str | os.PathLike[str], info: ShardInfo, *, columns: Sequence[str] | None = None
) -> pa.Table:
    """One shard's metadata table (only `columns` when given), without loading its vectors."""
    meta_path = _shard_file(index_dir, info.meta_file, verify=False)
    check_parquet_file(meta_path, rows=info.rows)
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
    path = _shard_file(index_dir, info.deleted, verify=verify)
    # The header's claim against the file's size, before numpy sizes a buffer from it.
    check_npy_file(path, dtype="<i8", ndim=1, shape=(info.deleted_rows,), what="deleted rows")
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IndexCorruptError(f"{path} cannot be read: {e}") from e
    if rows.dtype != np.int64 or rows.ndim != 1 or len(rows) != info.deleted_rows:
        raise IndexCorruptError(f"{path} does not hold {info.deleted_rows} row numbers")
    return rows


def load_shard(
    index_dir: str | os.PathLike[str],
    info: ShardInfo,
    *,
    verify: bool = False,
    mmap: bool | None = None,
    mmap_min_bytes: int = MMAP_MIN_BYTES,
) -> LoadedShard:
    """Read one shard's index and metadata, checking them against the manifest.

    The FAISS file is memory-mapped with `mmap=True`, read with False, and by default
    (`mmap=None`) mapped when it holds `mmap_min_bytes` or more.
    """
    index_path = _shard_file(index_dir, info.index_file, verify=verify)
    meta_path = _shard_file(index_dir, info.meta_file, verify=verify)
    if mmap is None:
        mmap = info.index_file.bytes >= mmap_min_bytes
    built = ann.read_index(index_path, mmap=mmap)
    try:
        # One chunk per column: `take` on a many-chunk column costs ~20 ms at 1M rows
        # (measured), on one chunk microseconds. ParquetFile.read gives a chunk per row group
        # (the writer writes one up to 1M rows), so the copy that joins them is rarely needed:
        # it cost half of the load (0.4 of 0.8 s at 1M rows, measured).
        check_parquet_file(meta_path, rows=info.rows)  # footer claims, before pyarrow reads
        meta = upgrade_metadata(pq.ParquetFile(meta_path).read())
        if any(col.num_chunks > 1 for col in meta.columns):
            meta = meta.combine_chunks()
    except (pa.ArrowException, OSError) as e:
        raise IndexCorruptError(f"{meta_path} cannot be read as Parquet: {e}") from e
    if built.ntotal != info.rows or meta.num_rows != info.rows:
        raise IndexCorruptError(
            f"shard {info.name}: manifest says {info.rows} rows, index has {built.ntotal}, "
            f"metadata has {meta.num_rows}; the index must be rebuilt from scratch"
        )
    deleted = read_deleted(index_dir, info, verify=verify)
    return LoadedShard(info=info, index=built, metadata=meta, deleted=deleted)


# ---------------------------------------------------------------------------------------------
# Reader


class Reader:
    """A consistent view of an index for searching: every shard it returns is of one generation.

    The reader pins its generation's files (see the module notes), so it keeps that view
    however many generations a writer lands meanwhile, until `refresh()` moves it to the
    newest or `close()` lets the files go. Shards load lazily. Without a pin (read-only
    index), a reader that finds a file gone re-reads the manifest and serves the new
    generation. A shard whose FAISS file holds `mmap_min_bytes` or more is memory-mapped
    (0 maps every shard).
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        manifest: Manifest | None = None,
        *,
        mmap_min_bytes: int = MMAP_MIN_BYTES,
    ):
        self.dir = Path(index_dir).expanduser()
        self.manifest = manifest or read_manifest(self.dir)
        self.mmap_min_bytes = mmap_min_bytes
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
            if all((shard_dir / n).is_file() for n in self.manifest.shard_files()):
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

    def _load(self, info: ShardInfo) -> LoadedShard:
        return load_shard(self.dir, info, mmap_min_bytes=self.mmap_min_bytes)

    def shards(self, modality: str | None = None) -> list[LoadedShard]:
        """The shards holding `modality` (all when None), all from the same generation.

        Shards not loaded yet are loaded in parallel, one thread a core: FAISS and Parquet
        reads release the GIL.
        """
        for _ in range(5):
            try:
                wanted = [
                    info
                    for info in self.manifest.shards
                    if modality is None or info.modality == modality
                ]
                missing = [info for info in wanted if info.name not in self._loaded]
                workers = min(len(missing), default_workers(), _LOAD_THREADS)
                if workers > 1:
                    loaded = bounded_map(self._load, missing, workers=workers, window=workers)
                else:
                    loaded = (self._load(info) for info in missing)
                for info, shard in zip(missing, loaded, strict=True):
                    self._loaded[info.name] = shard
                return [self._loaded[info.name] for info in wanted]
            except ShardMissingError:
                if not self.refresh():
                    raise
        raise IndexStoreError(f"{self.dir} keeps changing under the reader; try again")
