"""Writing an index: shard files first, the manifest last, one generation per commit.

A writer (holding `lock_index`) commits in steps with a `Writer`: `write_shard` any number of
times, then `commit` the shard list; each commit is one new generation.

Every file is written to a temporary name, fsynced and renamed, and shard files carry the
generation that wrote them, so a reader that loaded generation N never sees a file of N+1
half-written, and a crash before the manifest is renamed leaves generation N intact. Within a
shard the Parquet file is written before the FAISS file, and a shard is named by a manifest
only once both are complete.

After a commit, the files that neither the new generation, the one it replaced, nor a live
reader's pin (see `reader`) names are removed, and so are temporaries a killed writer left.
Only names the index itself makes are ever removed, and no symlink inside the index is
followed to write or delete (`safety`): a writer refuses a folder that is not an index, and
an index whose `.lock` or `shards/` is a link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xretrieve._fs import atomic_write
from xretrieve._types import Ids, Modality, Vectors
from xretrieve.errors import IndexLockedError, IndexNotFoundError, IndexStoreError
from xretrieve.store import ann
from xretrieve.store.manifest import (
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    PLAIN_FORMAT,
    SHARDS_DIR,
    Manifest,
    ShardInfo,
    describe_file,
    partition_stats,
    read_manifest,
    shard_number,
    upgrade_metadata,
)
from xretrieve.store.reader import pinned_files, read_deleted
from xretrieve.store.safety import (
    INDEX_ENTRIES,
    SHARD_DIR_FILE,
    check_index_target,
    folder,
    open_nofollow,
    unlink_recorded,
)

__all__ = ["ShardPayload", "Writer", "lock_index", "write_generation"]


@dataclass(frozen=True)
class ShardPayload:
    """What the indexer hands the store for one shard: vectors and aligned metadata."""

    modality: Modality
    vectors: Vectors
    metadata: pa.Table
    partition: dict[str, Any] = field(default_factory=dict)  # {"key": ..., "value": ...}


@contextlib.contextmanager
def lock_index(index_dir: Path) -> Iterator[None]:
    """Hold the index's writer lock; a second writer gets `IndexLockedError` at once.

    A folder holding other files than an index's is refused (`NotAnIndexError`) before
    anything is written into it.
    """
    check_index_target(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(index_dir, LOCK, os.O_RDWR | os.O_CREAT)
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


# ---------------------------------------------------------------------------------------------
# The commit points: a shard's Parquet file, a whole shard, the manifest


def _write_parquet(path: Path, meta: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(meta, tmp, compression="zstd"))


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
    _write_parquet(meta_path, meta)
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
        index_file=describe_file(index_path),
        meta_file=describe_file(meta_path),
        index_type=plan.kind,
        ann=tuned.to_dict(),
        partition=partition,
    )


def _write_manifest(index_dir: Path, manifest: Manifest) -> None:
    text = manifest.to_json()
    atomic_write(index_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Writer


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
        self.dir.mkdir(parents=True, exist_ok=True)
        with folder(self.dir, SHARDS_DIR, create=True):  # a real folder, not a link
            pass
        for rel in INDEX_ENTRIES:  # none of the index's folders may be a link
            with contextlib.suppress(FileNotFoundError), folder(self.dir, rel):
                pass
        self.manifest = _current(self.dir)
        self._next: dict[str, int] = {}
        for info in self.manifest.shards if self.manifest else ():
            self.reserve(info.name, info.modality)

    @property
    def generation(self) -> int:
        """The generation the next commit writes."""
        return (self.manifest.generation if self.manifest else 0) + 1

    def reserve(self, name: str, modality: str) -> None:
        """Never hand out `name` (or a lower number of `modality`) as a new shard name."""
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
        return replace(info, deleted=describe_file(path), deleted_rows=len(merged))

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
            format_version=FORMAT_VERSION if any(s.deleted for s in shards) else PLAIN_FORMAT,
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
        _write_manifest(self.dir, manifest)
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
        w.reserve(info.name, info.modality)
    for payload in payloads:
        shards += w.write_shard(payload, max_rows=max_rows_per_shard, index_type=index_type)
    return w.commit(shards, root=root, model=model, dim=dim, stats=stats)


def _save_rows(path: Path, rows: Ids) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, rows, allow_pickle=False)


def _slice_payload(p: ShardPayload, start: int, stop: int) -> ShardPayload:
    if start == 0 and stop >= len(p.vectors):
        return p
    return replace(p, vectors=p.vectors[start:stop], metadata=p.metadata.slice(start, stop - start))


def _collect_garbage(shard_dir: Path, manifest: Manifest, previous: Manifest | None) -> None:
    keep = manifest.shard_files() | (previous.shard_files() if previous else set())
    keep |= pinned_files(shard_dir.parent)
    with folder(shard_dir.parent, SHARDS_DIR) as fd:
        for name in os.listdir(fd):
            referenced = name in keep or any(name.startswith(k + ".") for k in keep)
            # A temporary (".<name>.<random>.tmp") is left by a killed writer: we hold the
            # lock, nobody else writes. Only names the index makes are removed at all.
            if not referenced or name.startswith("."):
                unlink_recorded(fd, name, pattern=SHARD_DIR_FILE)
