"""Indexer: media folder -> encoders -> shards, committed in batches, resumable after a crash.

One run, holding the index's writer lock, shares one `Run` between its stages (its state and
its `IndexOptions` live in `run`, below every stage):

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
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from xretrieve import store
from xretrieve._fs import display_path
from xretrieve.encoders import EncoderLike
from xretrieve.errors import FolderError, InputError
from xretrieve.indexer import commit, distributed, passes
from xretrieve.indexer.known import Known, corpus_shards, gone_files, read_known
from xretrieve.indexer.run import IndexOptions, IndexReport, Pending, Run, check_options
from xretrieve.media.image import IMAGE_EXTS
from xretrieve.media.scan import Problem, scan_folder

__all__ = ["index_folder"]


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
                    f"{encoder.spec.precision}: add to it in {built}, or rebuild it whole",
                    code=InputError.PRECISION_MISMATCH,
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
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="indexing", dynamic_ncols=True, smoothing=0.1)
