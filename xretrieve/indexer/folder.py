"""Indexer: media folder -> encoders -> shards, committed in batches, resumable after a crash.

One run, holding the index's writer lock, shares one `Run` between its stages:

1. *Plan* from `stat` alone (`known`): only the metadata columns of the stored shards are
   read, never their vectors; a file that did not change keeps its row where it is.
2. *Encode* the rest, captions first then images and sounds (`passes`), through a bounded
   pipeline; a file whose bytes hash to a known vector is not decoded nor encoded again.
   With `IndexOptions.ray`, the images are read, decoded and embedded on a Ray cluster
   (`distributed`); the driver's loop, its decisions and its commits stay the same.
   Every `commit_every` items (or `commit_seconds`) the new rows are committed as delta
   shards of a new generation (`commit`), which also marks the rows they replace, and
   those of files gone from the folder, as deleted.
3. *Finish*: one last generation drops the rows of files that are no longer indexed and
   merges the deltas (and small or re-partitioned shards) into shards of at most
   `max_rows_per_shard`, split by modality and by the `shard_by` partition.

A killed run leaves the last committed generation; the next run sees the committed files as
unchanged and goes on from there, and step 3 removes any older copy, so each file ends up in
the index exactly once.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xretrieve import store
from xretrieve._fs import display_path
from xretrieve.encoders import EncoderLike
from xretrieve.errors import FolderError, InputError
from xretrieve.indexer import commit, passes
from xretrieve.indexer.commit import Pending
from xretrieve.indexer.known import Known, corpus_shards, gone_files, read_known
from xretrieve.media.image import IMAGE_EXTS
from xretrieve.media.scan import Problem, Scan, scan_folder
from xretrieve.store import ann

__all__ = ["IndexOptions", "IndexReport", "Run", "check_options", "index_folder"]


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


def index_folder(
    folder: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    encoder: EncoderLike,
    options: IndexOptions | None = None,
) -> IndexReport:
    """Index every image and caption under `folder` into `index_dir`, committing in batches."""
    opts = check_options(options or IndexOptions(), dim=encoder.dim)
    started = time.perf_counter()
    scan = scan_folder(folder)
    if not scan.images and not scan.captions and not scan.audio:
        raise FolderError(
            f"nothing to index in {scan.root}: no images ({', '.join(sorted(IMAGE_EXTS))}), "
            "no audio and no .txt captions found"
        )
    if opts.torch_threads:
        import torch

        torch.set_num_threads(opts.torch_threads)
    out = Path(index_dir).expanduser()
    report = IndexReport(index=str(out), problems=list(scan.problems))
    report.failed = len(scan.problems)
    with contextlib.ExitStack() as stack:
        if opts.ray is not None and scan.images:  # connected before anything is written
            from xretrieve.indexer import distributed  # imports ray when it runs

            stack.enter_context(distributed.connect(opts.ray))
        stack.enter_context(store.lock_index(out))
        writer = store.Writer(out)
        previous = writer.manifest
        if opts.shard_by is None:
            keys = [s.partition.get("key", "none") for s in previous.shards] if previous else []
            opts = replace(opts, shard_by=keys[0] if keys and not opts.full else "none")
        known = Known()
        corpora: list[store.ShardInfo] = []
        if previous is not None:
            corpora = corpus_shards(out, previous)
            if corpora and previous.model.get("fingerprint") != encoder.spec.fingerprint:
                report.problems.append(
                    Problem(
                        str(out),
                        f"{len(corpora)} caption-corpus shards dropped: embedded "
                        "by another model; add the corpus again with `xretrieve add-captions`",
                    )
                )
                corpora = []
            previous = replace(
                previous, shards=tuple(s for s in previous.shards if s not in corpora)
            )
        if previous is not None and not opts.full:
            store.check_model(previous, encoder.spec.to_dict(), where=out)
            built = str(previous.model.get("precision") or "fp32")
            if built != encoder.spec.precision:
                raise InputError(
                    f"{display_path(out)} holds vectors made in {built}, not "
                    f"{encoder.spec.precision}: add to it in {built}, or rebuild it whole"
                )
            known = read_known(out, previous)
        base = [] if (opts.full or previous is None) else list(previous.shards)
        run = Run(
            scan=scan,
            encoder=encoder,
            options=opts,
            report=report,
            writer=writer,
            known=known,
            pending=Pending(
                shards=base,
                corpora=corpora,
                gone=gone_files(scan, known),
                # A full rebuild lands only its complete generation: the old one stays live.
                publish=not (opts.full and writer.manifest is not None),
            ),
            progress=_progress(
                len(scan.images) + len(scan.captions) + len(scan.audio), enabled=opts.progress
            ),
            started=started,
        )
        kinds = [passes.image_kind(encoder)]
        if scan.audio and "audio" in encoder.spec.towers:
            kinds.append(passes.audio_kind(encoder))
        elif scan.audio:
            report.problems.append(
                Problem(
                    display_path(scan.root),
                    f"{len(scan.audio)} audio files skipped: model {encoder.spec.name} has no "
                    "audio tower (add one with `xretrieve train-audio`)",
                )
            )
        try:
            passes.caption_pass(run)
            run.progress.update(0)
            for kind in kinds:
                source: passes.Source | None = None
                if opts.ray is not None and kind.modality == "image":
                    from xretrieve.indexer import distributed  # imports ray when it runs

                    source = distributed.image_results
                passes.media_pass(run, kind, source=source)
        finally:
            run.progress.close()
        report.removed = sum(1 for key in known.rows if key not in run.new_keys)
        if not report.images and not report.texts and not report.audio:
            raise FolderError(
                f"nothing could be indexed in {scan.root}: all {report.failed} files failed "
                f"(first: {report.problems[0].path}: {report.problems[0].reason})"
                if report.problems
                else f"nothing could be indexed in {scan.root}"
            )
        commit.commit(run)
        commit.finish(run)
        report.generation = writer.manifest.generation if writer.manifest else 0
    report.seconds = time.perf_counter() - started
    return report


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, *, enabled: bool) -> Any:
    import sys

    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="indexing", dynamic_ncols=True, smoothing=0.1)
