"""The state of one indexing run, shared by its stages, and the options it runs with.

The indexer's modules read top down (`pyproject.toml` checks it: no cycle):
`folder | corpus` -> `distributed` -> `passes` -> `commit` -> `run` -> `known`. This module
sits below every stage, so each stage takes a `Run` without importing the one that made it.

- `IndexOptions` declares every option of a run once, with its default; `check_options`
  holds their bounds and refuses a bad one before anything is written.
- `Run` is what the stages share: the folder's scan, the model, the options, the writer, the
  previous generation's rows (`Known`), the generation being built (`Pending`) and the
  report the run fills in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xretrieve import store
from xretrieve.encoders import EncoderLike
from xretrieve.errors import InputError
from xretrieve.indexer.known import Known, Ref
from xretrieve.media.scan import Problem, Scan
from xretrieve.store import ann

__all__ = [
    "MAX_BATCH",
    "MAX_TORCH_THREADS",
    "MAX_WORKERS",
    "IndexOptions",
    "IndexReport",
    "Item",
    "Pending",
    "Run",
    "check_options",
]


@dataclass(frozen=True)
class IndexOptions:
    """How to index: batching, decode threads, sharding, commits, rebuild or reuse."""

    batch_size: int = 32
    workers: int | None = None  # decode threads; None = cores available
    max_rows_per_shard: int = 1_000_000
    index_type: str | None = None  # FAISS index type override (see store.ann.plan_index)
    full: bool = False  # ignore the previous generation: re-read and re-encode everything
    progress: bool = True
    # Partition key: none | folder | year (store.PARTITION_KEYS); None keeps the index's own.
    shard_by: str | None = None
    commit_every: int = 4096  # items between two committed generations
    commit_seconds: float = 300.0  # ... or this long, whichever comes first
    torch_threads: int | None = None  # intra-op threads of the encoder; None = leave torch's
    # Images read, decoded and embedded on a Ray cluster (`distributed`): "auto" (a running
    # cluster, or a new local one) or its address; None = in this process.
    ray: str | None = None
    ray_concurrency: int | None = None  # encoder actors; None = one per GPU, or by CPUs
    # Rows under which a shard counts as small (`commit`): delta shards are cut at this size
    # and small shards are merged with their partition's new rows at the end of a run, while
    # a bigger one that loses few rows keeps its files and a deleted-row list. At most
    # `ann.FLAT_MAX_N`: a small shard is then an exact Flat shard, read back bit for bit.
    compact_rows: int = ann.FLAT_MAX_N


@dataclass
class IndexReport:
    """What a run did, for the end-of-run summary."""

    index: str
    indexed: int = 0  # items at paths the index did not hold
    updated: int = 0  # items at known paths whose content or caption changed
    unchanged: int = 0
    removed: int = 0  # items whose file is gone (or can no longer be read)
    failed: int = 0
    encoded: int = 0  # items that went through the encoder
    reused: int = 0  # items whose vector came from identical content (renamed, copied, touched)
    images: int = 0
    texts: int = 0
    audio: int = 0
    seconds: float = 0.0
    generation: int = 0
    commits: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        """Items processed (indexed + updated) per second of the run."""
        done = self.indexed + self.updated
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the end-of-run summary and the manifest's stats)."""
        return {
            "index": self.index,
            "generation": self.generation,
            "images": self.images,
            "texts": self.texts,
            "audio": self.audio,
            "indexed": self.indexed,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": self.failed,
            "encoded": self.encoded,
            "reused": self.reused,
            "commits": self.commits,
            "seconds": round(self.seconds, 3),
            "items_per_s": round(self.items_per_s, 2),
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }


@dataclass
class Item:
    """A row on its way into a delta shard, with where its vector comes from."""

    row: dict[str, Any]
    vector: np.ndarray | None = None  # encoded
    ref: Ref | None = None  # reused from a stored row
    same_as: Item | None = None  # reused from an item of this run not yet encoded


@dataclass
class Pending:
    """The generation a run is building: the shards it names and the rows not yet committed."""

    shards: list[store.ShardInfo]  # stored shards kept so far, plus this run's deltas
    # Caption-corpus shards (`add_captions`): not part of the folder, carried as they are.
    corpora: list[store.ShardInfo] = field(default_factory=list)
    # Stored rows to mark deleted in the next commit (files gone from the folder).
    gone: list[Ref] = field(default_factory=list)
    deltas: list[store.ShardInfo] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    # Content hashes met in this run and not yet committed: their first item.
    waiting: dict[str, Item] = field(default_factory=dict)
    last_commit: float = field(default_factory=time.monotonic)
    # Whether batch commits land a generation (not during a full rebuild of an existing index).
    publish: bool = True


@dataclass
class Run:
    """What one indexing run shares: the folder, the model, the options, the writer and the
    generation it builds."""

    scan: Scan
    encoder: EncoderLike
    options: IndexOptions
    report: IndexReport
    writer: store.Writer
    known: Known  # the previous generation's rows
    pending: Pending  # the generation being built and the rows not yet committed
    progress: Any  # a tqdm bar, or `_NoBar`
    started: float  # time.perf_counter() at the start of the run
    keep: set[tuple[str, int]] = field(default_factory=set)  # stored (shard, row)s that stay
    new_keys: set[tuple[str, ...]] = field(default_factory=set)  # items the folder still has
    first_caption: dict[str, str | None] = field(default_factory=dict)  # by sidecar stem

    def stats(self) -> dict[str, Any]:
        """The manifest's `stats` for a generation committed now."""
        self.report.seconds = time.perf_counter() - self.started
        return {"last_run": self.report.to_dict() | {"problems": len(self.report.problems)}}


#: Bounds of the options a caller (or a command line) may pass.
MAX_WORKERS = 256
MAX_TORCH_THREADS = 1024
MAX_BATCH = 65_536


def _whole(value: object, name: str, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    if not ok or (hi is not None and value > hi):  # type: ignore[operator]
        span = f"from {lo} to {hi:,}" if hi is not None else f">= {lo}"
        raise InputError(f"{name} must be a whole number {span}, got {value!r}")


def check_options(opts: IndexOptions, *, dim: int) -> IndexOptions:
    """Return `opts`, or raise `InputError` naming the first bad option -- before any write.

    The index type is planned once against the encoder's dimension, so a bad FAISS factory
    string is refused here rather than when the first shard is built.
    """
    _whole(opts.batch_size, "batch size", 1, MAX_BATCH)
    _whole(opts.max_rows_per_shard, "max rows per shard", 1)
    _whole(opts.commit_every, "commit size", 1)
    _whole(opts.compact_rows, "compact rows", 1, ann.FLAT_MAX_N)
    if opts.workers is not None:
        _whole(opts.workers, "workers", 1, MAX_WORKERS)
    if opts.torch_threads is not None:
        _whole(opts.torch_threads, "torch threads", 1, MAX_TORCH_THREADS)
    if opts.ray_concurrency is not None:
        _whole(opts.ray_concurrency, "Ray concurrency", 1, MAX_WORKERS)
    if opts.ray is not None and (not isinstance(opts.ray, str) or not opts.ray.strip()):
        raise InputError(f"Ray address must be auto or host:port, got {opts.ray!r}")
    if not opts.commit_seconds > 0:
        raise InputError(f"commit seconds must be > 0, got {opts.commit_seconds!r}")
    if opts.shard_by is not None and opts.shard_by not in store.PARTITION_KEYS:
        raise InputError(
            f"unknown shard_by {opts.shard_by!r}: use one of {', '.join(store.PARTITION_KEYS)}"
        )
    if opts.index_type is not None:
        if not isinstance(opts.index_type, str) or not opts.index_type.strip():
            raise InputError(f"index type must be a non-empty name, got {opts.index_type!r}")
        ann.plan_index(4096, dim, index_type=opts.index_type)
    return opts
