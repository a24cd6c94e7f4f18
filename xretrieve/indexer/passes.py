"""The two passes of a run over the folder: captions first, then images and sounds.

Each pass plans from `stat` alone: a file whose path, size and mtime match a stored row (and,
for an image, whose sidecar caption is the stored one) is unchanged, and its row stays
where it is. The rest goes through a bounded pipeline (`bounded_map`: reading and decoding in
worker threads feed encoder batches, in order). A file whose bytes hash to a known vector
(renamed, copied, touched) is not decoded nor encoded again; a file that cannot be read or
decoded becomes a `Problem` of the report and never stops the run. Rows go to the run's
pending generation (`commit`), which is committed whenever a batch is due.

A media pass has one driver loop (`_take`) whatever reads the files: local threads
(`local_results`) or a Ray cluster (`xretrieve.indexer.distributed`). Results may come in any
order and more than once (a retried batch); the first result of each file wins, so each file
yields one row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xretrieve import store
from xretrieve._fs import display_path, path_bytes
from xretrieve._threads import bounded_map, default_workers
from xretrieve._types import Modality, Vectors
from xretrieve.encoders import EncoderLike
from xretrieve.errors import MediaError
from xretrieve.indexer import commit
from xretrieve.indexer.known import Stored
from xretrieve.indexer.run import Item, Run
from xretrieve.media.image import content_hash, decode_image
from xretrieve.media.scan import MediaFile, Problem, Scan, read_captions

__all__ = [
    "Decoded",
    "Kind",
    "Source",
    "Todo",
    "audio_kind",
    "caption_pass",
    "image_kind",
    "local_results",
    "media_pass",
    "plan_media",
]


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _row(f: MediaFile, **columns: Any) -> dict[str, Any]:
    """The metadata row of a file of the folder (`columns` as `store.metadata_row` takes)."""
    return store.metadata_row(
        path=display_path(f.rel),
        path_bytes=path_bytes(f.rel),
        modality=f.modality,
        mtime_us=f.mtime_ns // 1000,
        **{"bytes": f.size, **columns},
    )


def _newest(s: Stored) -> int:
    return s.number


# ---------------------------------------------------------------------------------------------
# Captions


def caption_pass(run: Run) -> None:
    """Index the caption sidecars; record each sidecar's first caption by its stem."""
    scan, known, opts, report = run.scan, run.known, run.options, run.report
    first = run.first_caption
    todo: list[MediaFile] = []
    by_stem = {os.path.splitext(m.rel)[0]: m for m in scan.images}
    for cap in scan.captions:
        stem = os.path.splitext(cap.rel)[0]
        image = by_stem.get(stem)
        pair = display_path(image.rel) if image else None
        stored = known.texts_by_path.get(cap.rel, []) if not opts.full else []
        same = [
            (line, s)
            for line, s in stored
            if s.mtime_us == cap.mtime_ns // 1000 and s.image_path == pair
        ]
        if same:
            # One row per line, from the newest shard holding that line: a killed run can
            # leave an older copy behind, and one commit may split a file's lines across
            # two shards, so "the newest shard" alone would drop lines.
            by_line: dict[int, Stored] = {}
            for line, s in same:
                if line not in by_line or s.number > by_line[line].number:
                    by_line[line] = s
            rows = sorted(by_line.items(), key=lambda x: x[0])
            for line, s in rows:
                run.keep.add((s.ref[0].name, s.ref[1]))
                run.new_keys.add(("text", cap.rel, str(line)))
            first[stem] = rows[0][1].caption if rows and rows[0][0] == 0 else None
            report.unchanged += len(rows)
            report.texts += len(rows)
            run.progress.update()
        else:
            todo.append(cap)

    def read(cap: MediaFile) -> tuple[MediaFile, list[str] | None, str | None]:
        try:
            return cap, read_captions(_read(cap.fspath), path=cap.rel), None
        except MediaError as e:
            return cap, None, e.reason
        except OSError as e:
            return cap, None, f"cannot read: {e.strerror}"

    batch: list[Item] = []
    waiting = run.pending.waiting

    def encode() -> None:
        if batch:
            vecs = run.encoder.encode_texts([it.row["caption"] for it in batch])
            for it, v in zip(batch, vecs, strict=True):
                it.vector = v
            report.encoded += len(batch)
            batch.clear()

    workers = opts.workers or default_workers()
    for cap, lines, error in bounded_map(read, todo, workers=workers, window=4 * workers):
        run.progress.update()
        stem = os.path.splitext(cap.rel)[0]
        if lines is None:
            report.failed += 1
            report.problems.append(Problem(display_path(cap.fspath), error or "cannot read"))
            first[stem] = None
            continue
        first[stem] = lines[0] if lines else None
        image = by_stem.get(stem)
        for i, text in enumerate(lines):
            sha = content_hash(text.encode())
            key = ("text", cap.rel, str(i))
            old = known.rows.get(key)
            row = _row(
                cap,
                caption=text,
                image_path=display_path(image.rel) if image else None,
                line=i,
                bytes=len(text.encode()),
                content_hash=sha,
            )
            item = Item(row)
            hit = None if opts.full else known.vectors.get(sha)
            if hit is not None:
                item.ref = hit[0]
                report.reused += 1
            elif sha in waiting:
                item.same_as = waiting[sha]
                report.reused += 1
            else:
                waiting[sha] = item
                batch.append(item)
            if old is None:
                report.indexed += 1
            elif any(s.sha == sha for s in old):
                report.unchanged += 1
            else:
                report.updated += 1
            run.new_keys.add(key)
            report.texts += 1
            run.pending.items.append(item)
            if len(batch) >= max(256, opts.batch_size):
                encode()
        if commit.due(run):
            encode()
            commit.commit(run)
    encode()


# ---------------------------------------------------------------------------------------------
# Images and sounds: files that are decoded in worker threads, then encoded in batches


@dataclass(frozen=True)
class Kind:
    """How one file modality is decoded (in a worker thread) and encoded (in batches)."""

    modality: Modality
    files: Callable[[Scan], list[MediaFile]]
    # bytes -> (facts for the metadata row, what `encode` takes); raises MediaError
    decode: Callable[[bytes, str], tuple[dict[str, Any], Any]]
    encode: Callable[[list[Any]], Vectors]


def _stack(pixels: list[Any]) -> Any:
    import torch  # only an image pass needs it: an unchanged re-index never loads torch

    return torch.stack(pixels)


def image_kind(encoder: EncoderLike) -> Kind:
    """Images: decoded (drafted to the model's size) and preprocessed in the worker threads."""
    target = encoder.spec.image_size

    def decode(data: bytes, rel: str) -> tuple[dict[str, Any], Any]:
        dec = decode_image(data, path=rel, target_size=target)
        return {"width": dec.width, "height": dec.height}, encoder.preprocess(dec.image)

    return Kind(
        "image",
        lambda scan: scan.images,
        decode,
        lambda pixels: encoder.encode_pixels(_stack(pixels)),
    )


def audio_kind(encoder: EncoderLike) -> Kind:
    """Sounds: decoded, resampled and turned into the audio tower's inputs in the workers."""
    from xretrieve.media.audio import decode_audio

    rate = encoder.audio_sample_rate

    def decode(data: bytes, rel: str) -> tuple[dict[str, Any], Any]:
        dec = decode_audio(data, sample_rate=rate)
        facts = dec.facts()
        # The tower's per-clip inputs (log-mel) are made here, in the decode thread.
        prepared = encoder.prepare_audio(dec.waveform)
        return {c: facts[c] for c in ("duration", "sample_rate", "channels")}, prepared

    return Kind("audio", lambda scan: scan.audio, decode, encoder.encode_prepared_audio)


@dataclass
class Decoded:
    """A file of the todo list, read and hashed: decoded for the encoder, or embedded already.

    `index` is its position in the pass's todo list. A local pass carries the encoder's input
    (`payload`); a distributed one (`distributed`) the vector a worker made (`vector`). Known
    content carries neither: its stored vector is reused.
    """

    index: int
    sha: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    payload: Any = None
    vector: np.ndarray | None = None
    error: str | None = None


#: The files a media pass must read: (file, its stored row if the index held its path).
Todo = list[tuple[MediaFile, Stored | None]]
#: Where a pass's results come from: `Decoded`s of the todo list, in any order, possibly
#: repeated (a retried batch); the first result of each file wins.
Source = Callable[[Run, Kind, Todo], Iterable[Decoded]]


def _encode_batch(kind: Kind, payloads: list[Any]) -> Vectors:
    """One encoder batch of decoded files."""
    return kind.encode(payloads)


def plan_media(run: Run, kind: Kind) -> Todo:
    """Plan one modality from `stat`: keep the unchanged files, return those to read."""
    scan, known, opts, report = run.scan, run.known, run.options, run.report
    modality = kind.modality
    todo: Todo = []
    for f in kind.files(scan):
        key = (modality, f.rel)
        caption = run.first_caption.get(os.path.splitext(f.rel)[0])
        stored = [] if opts.full else known.rows.get(key, [])
        same = [s for s in stored if s.size == f.size and s.mtime_us == f.mtime_ns // 1000]
        if same:
            best = max(same, key=_newest)  # a killed run may have left a newer copy
            run.progress.update()
            _count(run, modality)
            run.new_keys.add(key)
            if best.caption == caption:
                run.keep.add((best.ref[0].name, best.ref[1]))
                report.unchanged += 1
                continue
            # Same bytes, new sidecar caption: a new row, the stored vector.
            row = _row(f, caption=caption, content_hash=best.sha, **best.facts)
            run.pending.items.append(Item(row, ref=best.ref))
            report.updated += 1
            report.reused += 1
            continue
        todo.append((f, stored[0] if stored else None))
    return todo


def local_results(run: Run, kind: Kind, todo: Todo) -> Iterator[Decoded]:
    """Read, hash and decode the todo files in worker threads of this process, in order."""
    known, opts = run.known, run.options

    def work(job: tuple[int, tuple[MediaFile, Stored | None]]) -> Decoded:
        i, (f, _) = job
        try:
            data = _read(f.fspath)
        except OSError as e:
            return Decoded(i, error=f"cannot read: {e.strerror}")
        sha = content_hash(data)
        if not opts.full and sha in known.vectors:
            return Decoded(i, sha)  # known content: no decoding needed
        try:
            facts, payload = kind.decode(data, f.rel)
        except MediaError as e:
            return Decoded(i, error=e.reason)
        except (OSError, ValueError, RuntimeError, MemoryError) as e:
            return Decoded(i, error=f"cannot preprocess: {type(e).__name__}: {e}")
        return Decoded(i, sha, facts, payload)

    workers = opts.workers or default_workers()
    window = max(2 * opts.batch_size, 4 * workers)
    yield from bounded_map(work, enumerate(todo), workers=workers, window=window)


def media_pass(run: Run, kind: Kind, *, source: Source | None = None) -> None:
    """Index the files of one modality (images or sounds).

    `source` gives the results of the files to read (default: `local_results`); whichever
    it is, this loop decides each file's row, reuses known vectors, counts, and commits.
    """
    todo = plan_media(run, kind)
    results = (source or local_results)(run, kind, todo)
    try:
        _take(run, kind, todo, results)
    finally:
        close = getattr(results, "close", None)
        if close is not None:  # a generator holding a pool or a cluster connection
            close()


def _take(run: Run, kind: Kind, todo: Todo, results: Iterable[Decoded]) -> None:
    """The driver loop shared by every source: results -> rows, batches and commits."""
    known, opts, report = run.known, run.options, run.report
    modality = kind.modality
    batch: list[tuple[Item, Any]] = []
    waiting = run.pending.waiting
    seen: set[int] = set()

    def encode() -> None:
        if batch:
            out = _encode_batch(kind, [p for _, p in batch])
            for (it, _), v in zip(batch, out, strict=True):
                it.vector = v
            report.encoded += len(batch)
            batch.clear()

    for d in results:
        if d.index in seen:  # a retried batch delivered this file again: the first wins
            continue
        seen.add(d.index)
        f, old = todo[d.index]
        run.progress.update()
        if d.error is not None:
            report.failed += 1
            report.problems.append(Problem(display_path(f.fspath), d.error))
            continue
        caption = run.first_caption.get(os.path.splitext(f.rel)[0])
        hit = None if opts.full else known.vectors.get(d.sha)
        if d.payload is None and d.vector is None and hit is None:  # pragma: no cover
            raise RuntimeError(f"{f.rel}: nothing to encode and no stored vector")
        item = Item(_row(f, caption=caption, content_hash=d.sha))
        if hit is not None:
            item.ref, facts = hit
            item.row.update(facts)
            report.reused += 1
        elif d.sha in waiting:
            item.same_as = waiting[d.sha]
            item.row.update(d.facts)
            report.reused += 1
        else:
            item.row.update(d.facts)
            waiting[d.sha] = item
            if d.vector is not None:  # embedded by a worker
                item.vector = d.vector
                report.encoded += 1
            else:
                batch.append((item, d.payload))
                if len(batch) >= opts.batch_size:
                    encode()
        run.pending.items.append(item)
        run.new_keys.add((modality, f.rel))
        _count(run, modality)
        if old is None:
            report.indexed += 1
        else:
            report.updated += 1
        if commit.due(run):
            encode()
            commit.commit(run)
    encode()


def _count(run: Run, modality: Modality) -> None:
    if modality == "image":
        run.report.images += 1
    else:
        run.report.audio += 1
