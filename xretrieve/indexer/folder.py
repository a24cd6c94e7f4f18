"""Indexer: media folder -> encoders -> shards, committed in batches, resumable after a crash.

One run, holding the index's writer lock:

1. *Plan* from `stat` alone: a file whose path, size and mtime match a stored row (and, for
   an image, whose sidecar caption is the stored one) is unchanged, and its row stays where
   it is. Only the metadata columns of the stored shards are read, never their vectors.
2. *Encode* the rest, captions first then images, through a bounded pipeline (decode threads
   feed encoder batches in order). A file whose bytes hash to a known vector (renamed,
   copied, touched) is not decoded nor encoded again. Every `commit_every` items (or
   `commit_seconds`) the new rows are written as small delta shards and a new generation is
   committed that holds the old shards plus every delta so far. The same generation marks
   the stored rows those new rows replace as deleted, and the first one also the rows of
   files gone from the folder, so no generation shows a file twice or a deleted file.
3. *Finish*: one last generation drops the rows of files that are no longer indexed and
   merges the deltas (and small or re-partitioned shards) into shards of at most
   `max_rows_per_shard`, split by modality and by the `shard_by` partition. A big shard that
   lost at most `COMPACT_DELETED_FRACTION` of its rows keeps its files and a list of deleted
   rows instead of being rewritten (its ANN index is not trained again).

A killed run leaves the last committed generation; the next run sees the committed files as
unchanged and goes on from there, and step 3 removes any older copy, so each file ends up in
the index exactly once.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from xretrieve import store
from xretrieve._fs import display_path, path_bytes
from xretrieve._threads import bounded_map, default_workers
from xretrieve._types import Modality, Vectors
from xretrieve.encoders import Encoder
from xretrieve.errors import FolderError, InputError, MediaError, ModelMismatchError
from xretrieve.media.image import IMAGE_EXTS, content_hash, decode_image
from xretrieve.media.scan import MediaFile, Problem, Scan, read_captions, scan_folder
from xretrieve.store import ann

__all__ = ["IndexOptions", "IndexReport", "bounded_map", "index_folder"]

#: Shards smaller than this are merged with their partition's new rows at the end of a run
#: (they are exact Flat shards, so their vectors come back bit for bit).
COMPACT_ROWS = ann.FLAT_MAX_N
#: A shard at least COMPACT_ROWS big is rewritten only when more than this fraction of its
#: rows is deleted; below that, its deleted rows are listed and skipped by searches.
COMPACT_DELETED_FRACTION = 0.25


@dataclass(frozen=True)
class IndexOptions:
    """How to index: batching, decode threads, sharding, commits, rebuild or reuse."""

    batch_size: int = 32
    workers: int | None = None  # decode threads; None = cores available
    max_rows_per_shard: int = 1_000_000
    index_type: str | None = None  # FAISS index type override (see xretrieve.ann.plan_index)
    full: bool = False  # ignore the previous generation: re-read and re-encode everything
    progress: bool = True
    # Partition key: none | folder | year (store.PARTITION_KEYS); None keeps the index's own.
    shard_by: str | None = None
    commit_every: int = 4096  # items between two committed generations
    commit_seconds: float = 300.0  # ... or this long, whichever comes first
    torch_threads: int | None = None  # intra-op threads of the encoder; None = leave torch's


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


# ---------------------------------------------------------------------------------------------
# What the index already holds


Ref = tuple[store.ShardInfo, int]  # a stored row: its shard and row number


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@dataclass(slots=True)
class _Stored:
    """A stored row, as far as planning needs it."""

    ref: Ref
    size: int
    mtime_us: int
    sha: str
    caption: str | None
    facts: dict[str, Any]  # width/height of an image, duration/sample_rate/channels of audio
    image_path: str | None = None


@dataclass
class _Known:
    """The previous generation's rows by key, and where each content hash's vector lives."""

    shards: list[store.ShardInfo] = field(default_factory=list)
    rows: dict[tuple[str, ...], list[_Stored]] = field(default_factory=dict)
    texts_by_path: dict[str, list[tuple[int, _Stored]]] = field(default_factory=dict)
    vectors: dict[str, tuple[Ref, dict[str, Any]]] = field(default_factory=dict)


_PLAN_COLUMNS = (
    "path",
    "path_bytes",
    "modality",
    "line",
    "bytes",
    "mtime",
    "content_hash",
    "caption",
    "image_path",
    *store.FACT_COLUMNS,
)


def _column(t: pa.Table, name: str) -> list[Any]:
    if name not in t.column_names:
        return [None] * t.num_rows
    col = t.column(name)
    if name == "mtime":
        col = pc.cast(col, pa.int64())
    return col.to_pylist()


def _read_known(index_dir: Path, manifest: store.Manifest) -> _Known:
    known = _Known(shards=list(manifest.shards))
    for info in manifest.shards:
        t = store.read_metadata(index_dir, info, columns=_PLAN_COLUMNS)
        cols = {name: _column(t, name) for name in _PLAN_COLUMNS}
        deleted = set(store.read_deleted(index_dir, info).tolist())
        for row in range(t.num_rows):
            raw = cols["path_bytes"][row]
            rel = os.fsdecode(raw) if raw is not None else cols["path"][row]
            line = cols["line"][row]
            s = _Stored(
                (info, row),
                cols["bytes"][row],
                cols["mtime"][row],
                cols["content_hash"][row],
                cols["caption"][row],
                {c: cols[c][row] for c in store.FACT_COLUMNS if cols[c][row] is not None},
                cols["image_path"][row],
            )
            # A deleted row's vector can still be reused; the row itself is not in the index.
            known.vectors.setdefault(s.sha, ((info, row), s.facts))
            if row in deleted:
                continue
            if cols["modality"][row] == "text":
                known.texts_by_path.setdefault(rel, []).append((line, s))
                key: tuple[str, ...] = ("text", rel, str(line))
            else:
                key = (cols["modality"][row], rel)
            known.rows.setdefault(key, []).append(s)
    return known


def _corpus_shards(index_dir: Path, manifest: store.Manifest) -> list[store.ShardInfo]:
    """Text shards added by `add-captions`: their rows name a corpus file by absolute path."""
    found = []
    for info in manifest.shards:
        if info.modality != "text":
            continue
        paths = store.read_metadata(index_dir, info, columns=("path",)).column("path")
        if paths.null_count == 0 and pc.all(pc.starts_with(paths, "/")).as_py():
            found.append(info)
    return found


def _check_model(index_dir: Path, manifest: store.Manifest, encoder: Encoder) -> None:
    if manifest.model.get("fingerprint") != encoder.spec.fingerprint:
        raise ModelMismatchError(
            f"{index_dir} was built with model {manifest.model.get('name')} "
            f"(fingerprint {manifest.model.get('fingerprint')}), not {encoder.spec.name} "
            f"({encoder.spec.fingerprint}); use that model, another --index, or --full to rebuild"
        )
    has_audio = any(info.modality == "audio" for info in manifest.shards)
    if has_audio and manifest.model.get("audio_fingerprint") != encoder.spec.audio_fingerprint:
        raise ModelMismatchError(
            f"{index_dir} holds audio embedded by another audio tower "
            f"({manifest.model.get('audio_fingerprint')}) than {encoder.spec.name}'s "
            f"({encoder.spec.audio_fingerprint}); use that model, or --full to rebuild"
        )


# ---------------------------------------------------------------------------------------------
# Rows and partitions


def _year(mtime_ns: int) -> int:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).year


def _row(f: MediaFile, **fields: Any) -> dict[str, Any]:
    shown = display_path(f.rel)
    return {
        "path": shown,
        "path_bytes": path_bytes(f.rel),
        "modality": f.modality,
        "caption": None,
        "image_path": None,
        "line": None,
        **dict.fromkeys(store.FACT_COLUMNS),
        "bytes": f.size,
        "mtime": f.mtime_ns // 1000,
        "folder": store.top_folder(shown),
        "year": _year(f.mtime_ns),
        **fields,
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    arrays = []
    for fld in store.METADATA_SCHEMA:
        if fld.name in ("shard", "row"):
            arrays.append(pa.array([""] * len(rows) if fld.name == "shard" else [0] * len(rows)))
        elif fld.name == "mtime":
            arrays.append(pa.array([r["mtime"] for r in rows], pa.int64()).cast(fld.type))
        else:
            arrays.append(pa.array([r.get(fld.name) for r in rows], fld.type))
    return pa.Table.from_arrays(arrays, schema=store.METADATA_SCHEMA)


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    """The identity of an item across runs: modality and path (and line, for a caption)."""
    rel = os.fsdecode(row["path_bytes"]) if row.get("path_bytes") is not None else row["path"]
    if row["modality"] == "text":
        return ("text", rel, str(row["line"]))
    return (row["modality"], rel)


def _gone_files(scan: Scan, known: _Known) -> list[Ref]:
    """Stored rows whose file is no longer in the folder at all."""
    present = {(f.modality, f.rel) for f in (*scan.images, *scan.audio)}
    present |= {("text", f.rel) for f in scan.captions}
    return [s.ref for key, rows in known.rows.items() if key[:2] not in present for s in rows]


def _partition_value(key: str | None, row: dict[str, Any]) -> Any:
    return None if key in (None, "none") else row[key]


# ---------------------------------------------------------------------------------------------
# Pending rows and batch commits


@dataclass
class _Item:
    """A row on its way into a delta shard, with where its vector comes from."""

    row: dict[str, Any]
    vector: np.ndarray | None = None  # encoded
    ref: Ref | None = None  # reused from a stored row
    same_as: _Item | None = None  # reused from an item of this run not yet encoded


class _Committer:
    """Collects new rows, writes them as delta shards and commits a generation per batch."""

    def __init__(
        self,
        writer: store.Writer,
        base: list[store.ShardInfo],
        *,
        root: str,
        encoder: Encoder,
        options: IndexOptions,
        known: _Known,
        report: IndexReport,
    ) -> None:
        self.writer = writer
        self.shards = list(base)
        self.deltas: list[store.ShardInfo] = []
        self.root = root
        self.encoder = encoder
        self.opts = options
        self.known = known
        self.report = report
        self.pending: list[_Item] = []
        # Caption-corpus shards (`add-captions`): not part of the folder, carried as they are.
        self.corpora: list[store.ShardInfo] = []
        # Content hashes met in this run and not yet committed: their first item.
        self.waiting: dict[str, _Item] = {}
        self.last_commit = time.monotonic()
        # Stored rows to mark deleted in the next commit (files gone from the folder).
        self.gone: list[Ref] = []

    def add(self, item: _Item) -> None:
        self.pending.append(item)

    def due(self) -> bool:
        return len(self.pending) >= self.opts.commit_every or (
            bool(self.pending) and time.monotonic() - self.last_commit >= self.opts.commit_seconds
        )

    def _resolve(self) -> Vectors:
        dim = self.encoder.dim
        out = np.empty((len(self.pending), dim), np.float32)
        by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
        infos: dict[str, store.ShardInfo] = {}
        for i, item in enumerate(self.pending):
            src = item
            while src.same_as is not None:
                src = src.same_as
            if src.vector is not None:
                out[i] = src.vector
            elif src.ref is not None:
                info, row = src.ref
                by_shard[info.name].append((i, row))
                infos[info.name] = info
            else:  # pragma: no cover - every item is encoded before a commit
                raise RuntimeError("an item reached a commit without a vector")
        current = {s.name: s for s in self.shards}
        for name, wanted in by_shard.items():
            built = store.load_shard(self.writer.dir, current.get(name, infos[name])).index
            rows = np.array([r for _, r in wanted], np.int64)
            vecs = ann.reconstruct_vectors(built, rows)
            out[[i for i, _ in wanted]] = vecs
        return out

    def commit(self, *, stats: dict[str, Any]) -> None:
        """Write the pending rows as delta shards (one per modality and partition), then commit."""
        if not self.pending:
            return
        vectors = self._resolve()
        groups: dict[tuple[Modality, Any], list[int]] = defaultdict(list)
        for i, item in enumerate(self.pending):
            groups[(item.row["modality"], _partition_value(self.opts.shard_by, item.row))].append(i)
        for (modality, value), idx in groups.items():
            payload = store.ShardPayload(
                modality,
                np.ascontiguousarray(vectors[idx]),
                _table([self.pending[i].row for i in idx]),
                {"key": self.opts.shard_by, "value": value},
            )
            cap = min(COMPACT_ROWS, self.opts.max_rows_per_shard)
            infos = self.writer.write_shard(payload, max_rows=cap, index_type="flat")
            self.deltas += infos
            self.shards += infos
            offset = 0
            for info in infos:
                for j in range(info.rows):
                    item = self.pending[idx[offset + j]]
                    self.known.vectors.setdefault(
                        item.row["content_hash"],
                        ((info, j), _facts(item.row)),
                    )
                offset += info.rows
        self._delete_replaced()
        self.shards.sort(key=_shard_order)
        self.writer.commit(
            self.shards + self.corpora,
            root=self.root,
            model=self.encoder.spec.to_dict(),
            dim=self.encoder.dim,
            stats=stats,
        )
        self.report.commits += 1
        self.pending.clear()
        self.waiting.clear()
        self.gone.clear()
        self.last_commit = time.monotonic()

    def _delete_replaced(self) -> None:
        """Mark deleted the stored rows that the pending rows replace, and those of gone files."""
        refs = list(self.gone)
        for item in self.pending:
            refs += [s.ref for s in self.known.rows.get(_key(item.row), [])]
        by_shard: dict[str, list[int]] = defaultdict(list)
        for info, row in refs:
            by_shard[info.name].append(row)
        if by_shard:
            self.shards = [
                self.writer.write_deletions(s, np.array(by_shard[s.name], np.int64))
                if s.name in by_shard
                else s
                for s in self.shards
            ]


# ---------------------------------------------------------------------------------------------
# Captions


def _caption_pass(
    scan: Scan,
    known: _Known,
    opts: IndexOptions,
    committer: _Committer,
    keep: set[tuple[str, int]],
    new_keys: set[tuple[str, ...]],
    report: IndexReport,
    bar: Any,
    stats: Callable[[], dict[str, Any]],
) -> dict[str, str | None]:
    """Index the caption sidecars; return each sidecar's first caption by its stem."""
    first: dict[str, str | None] = {}
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
            by_line: dict[int, _Stored] = {}
            for line, s in same:
                if line not in by_line or _number(s) > _number(by_line[line]):
                    by_line[line] = s
            rows = sorted(by_line.items(), key=lambda x: x[0])
            for line, s in rows:
                keep.add((s.ref[0].name, s.ref[1]))
                new_keys.add(("text", cap.rel, str(line)))
            first[stem] = rows[0][1].caption if rows and rows[0][0] == 0 else None
            report.unchanged += len(rows)
            report.texts += len(rows)
            bar.update()
        else:
            todo.append(cap)

    def read(cap: MediaFile) -> tuple[MediaFile, list[str] | None, str | None]:
        try:
            return cap, read_captions(_read(cap.fspath), path=cap.rel), None
        except MediaError as e:
            return cap, None, e.reason
        except OSError as e:
            return cap, None, f"cannot read: {e.strerror}"

    batch: list[_Item] = []
    waiting = committer.waiting

    def encode() -> None:
        if batch:
            vecs = committer.encoder.encode_texts([it.row["caption"] for it in batch])
            for it, v in zip(batch, vecs, strict=True):
                it.vector = v
            report.encoded += len(batch)
            batch.clear()

    workers = opts.workers or default_workers()
    for cap, lines, error in bounded_map(read, todo, workers=workers, window=4 * workers):
        bar.update()
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
            item = _Item(row)
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
            new_keys.add(key)
            report.texts += 1
            committer.add(item)
            if len(batch) >= max(256, opts.batch_size):
                encode()
        if committer.due():
            encode()
            committer.commit(stats=stats())
    encode()
    return first


def _shard_order(s: store.ShardInfo) -> tuple[int, int]:
    order = {"image": 0, "text": 1, "audio": 2}
    return order.get(s.modality, 9), store.shard_number(s.name)


def _number(s: _Stored) -> int:
    return store.shard_number(s.ref[0].name)


# ---------------------------------------------------------------------------------------------
# Images and sounds: files that are decoded in worker threads, then encoded in batches


@dataclass(frozen=True)
class _Kind:
    """How one file modality is decoded (in a worker thread) and encoded (in batches)."""

    modality: Modality
    files: Callable[[Scan], list[MediaFile]]
    # bytes -> (facts for the metadata row, what `encode` takes); raises MediaError
    decode: Callable[[bytes, str], tuple[dict[str, Any], Any]]
    encode: Callable[[list[Any]], Vectors]


def _image_kind(encoder: Encoder) -> _Kind:
    target = encoder.spec.image_size

    def decode(data: bytes, rel: str) -> tuple[dict[str, Any], Any]:
        dec = decode_image(data, path=rel, target_size=target)
        return {"width": dec.width, "height": dec.height}, encoder.preprocess(dec.image)

    return _Kind(
        "image",
        lambda scan: scan.images,
        decode,
        lambda pixels: encoder.encode_pixels(torch.stack(pixels)),
    )


def _audio_kind(encoder: Encoder) -> _Kind:
    from xretrieve.media.audio import decode_audio

    rate = encoder.audio_sample_rate

    def decode(data: bytes, rel: str) -> tuple[dict[str, Any], Any]:
        dec = decode_audio(data, sample_rate=rate)
        facts = dec.facts()
        # The tower's per-clip inputs (log-mel) are made here, in the decode thread.
        prepared = encoder.prepare_audio(dec.waveform)
        return {c: facts[c] for c in ("duration", "sample_rate", "channels")}, prepared

    return _Kind("audio", lambda scan: scan.audio, decode, encoder.encode_prepared_audio)


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    return {c: row[c] for c in store.FACT_COLUMNS if row.get(c) is not None}


@dataclass
class _Decoded:
    file: MediaFile
    sha: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    payload: Any = None
    error: str | None = None


def _media_pass(
    kind: _Kind,
    scan: Scan,
    known: _Known,
    opts: IndexOptions,
    committer: _Committer,
    keep: set[tuple[str, int]],
    new_keys: set[tuple[str, ...]],
    first_caption: dict[str, str | None],
    report: IndexReport,
    bar: Any,
    stats: Callable[[], dict[str, Any]],
) -> None:
    modality = kind.modality
    todo: list[tuple[MediaFile, _Stored | None]] = []
    for f in kind.files(scan):
        key = (modality, f.rel)
        caption = first_caption.get(os.path.splitext(f.rel)[0])
        stored = [] if opts.full else known.rows.get(key, [])
        same = [s for s in stored if s.size == f.size and s.mtime_us == f.mtime_ns // 1000]
        if same:
            best = max(same, key=_number)  # a killed run may have left a newer copy
            bar.update()
            _count(report, modality)
            new_keys.add(key)
            if best.caption == caption:
                keep.add((best.ref[0].name, best.ref[1]))
                report.unchanged += 1
                continue
            # Same bytes, new sidecar caption: a new row, the stored vector.
            row = _row(f, caption=caption, content_hash=best.sha, **best.facts)
            committer.add(_Item(row, ref=best.ref))
            report.updated += 1
            report.reused += 1
            continue
        todo.append((f, stored[0] if stored else None))

    def work(job: tuple[MediaFile, _Stored | None]) -> _Decoded:
        f = job[0]
        try:
            data = _read(f.fspath)
        except OSError as e:
            return _Decoded(f, error=f"cannot read: {e.strerror}")
        sha = content_hash(data)
        if not opts.full and sha in known.vectors:
            return _Decoded(f, sha)  # known content: no decoding needed
        try:
            facts, payload = kind.decode(data, f.rel)
        except MediaError as e:
            return _Decoded(f, error=e.reason)
        except (OSError, ValueError, RuntimeError, MemoryError) as e:
            return _Decoded(f, error=f"cannot preprocess: {type(e).__name__}: {e}")
        return _Decoded(f, sha, facts, payload)

    batch: list[tuple[_Item, Any]] = []
    waiting = committer.waiting

    def encode() -> None:
        if batch:
            out = kind.encode([p for _, p in batch])
            for (it, _), v in zip(batch, out, strict=True):
                it.vector = v
            report.encoded += len(batch)
            batch.clear()
            store.manifest.kill_point("encoded-batch")

    workers = opts.workers or default_workers()
    window = max(2 * opts.batch_size, 4 * workers)
    for (_, old), d in zip(
        todo, bounded_map(work, todo, workers=workers, window=window), strict=True
    ):
        bar.update()
        f = d.file
        if d.error is not None:
            report.failed += 1
            report.problems.append(Problem(display_path(f.fspath), d.error))
            continue
        caption = first_caption.get(os.path.splitext(f.rel)[0])
        hit = None if opts.full else known.vectors.get(d.sha)
        if d.payload is None and hit is None:  # pragma: no cover - decided in the worker
            raise RuntimeError(f"{f.rel}: nothing to encode and no stored vector")
        item = _Item(_row(f, caption=caption, content_hash=d.sha))
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
            batch.append((item, d.payload))
            if len(batch) >= opts.batch_size:
                encode()
        committer.add(item)
        new_keys.add((modality, f.rel))
        _count(report, modality)
        if old is None:
            report.indexed += 1
        else:
            report.updated += 1
        if committer.due():
            encode()
            committer.commit(stats=stats())
    encode()


def _count(report: IndexReport, modality: Modality) -> None:
    if modality == "image":
        report.images += 1
    else:
        report.audio += 1


# ---------------------------------------------------------------------------------------------
# The final generation: drop stale rows, merge small shards


def _finish(
    committer: _Committer,
    known: _Known,
    keep: set[tuple[str, int]],
    *,
    stats: dict[str, Any],
) -> bool:
    """Land the final generation; False when there was nothing to do."""
    opts = committer.opts
    writer = committer.writer
    delta_names = {s.name for s in committer.deltas}

    def stale_rows(info: store.ShardInfo) -> list[int]:
        if info.name in delta_names:
            return []
        return [r for r in range(info.rows) if (info.name, r) not in keep]

    big = min(COMPACT_ROWS, opts.max_rows_per_shard)
    groups: dict[tuple[str, Any], list[store.ShardInfo]] = defaultdict(list)
    for s in committer.shards:
        groups[(s.modality, s.partition.get("value"))].append(s)
    rework: list[store.ShardInfo] = []
    trimmed: dict[str, store.ShardInfo] = {}  # big shards that only get deleted rows
    for members in groups.values():
        small = [s for s in members if s.rows < big or s.name in delta_names]
        for s in members:
            stale = stale_rows(s)
            if (
                s.partition.get("key") != opts.shard_by
                or (s in small and len(small) > 1)
                or (s.name in delta_names and opts.index_type is not None)
            ):
                rework.append(s)
            elif stale and s.rows >= big and len(stale) <= COMPACT_DELETED_FRACTION * s.rows:
                info = writer.write_deletions(s, np.array(stale, np.int64))
                if info != s:
                    trimmed[s.name] = info
            elif stale:
                rework.append(s)
    if not rework and not trimmed:
        return False  # the generation already committed is the final one
    rework_names = {s.name for s in rework}
    final = [trimmed.get(s.name, s) for s in committer.shards if s.name not in rework_names]
    buffers: dict[tuple[Modality, Any], tuple[list[Vectors], list[pa.Table]]] = defaultdict(
        lambda: ([], [])
    )

    def flush(gk: tuple[Modality, Any], *, force: bool) -> None:
        vecs, metas = buffers[gk]
        n = sum(len(v) for v in vecs)
        cap = opts.max_rows_per_shard
        take = n if force else (n // cap) * cap  # only full shards until the last flush
        if take == 0:
            return
        allv = np.concatenate(vecs)
        allm = pa.concat_tables(metas)
        payload = store.ShardPayload(
            gk[0],
            np.ascontiguousarray(allv[:take]),
            allm.slice(0, take),
            {"key": opts.shard_by, "value": gk[1]},
        )
        final.extend(writer.write_shard(payload, max_rows=cap, index_type=opts.index_type))
        store.manifest.kill_point("merged-shard")
        buffers[gk] = ([allv[take:]], [allm.slice(take)]) if take < n else ([], [])

    for info in rework:
        shard = store.load_shard(writer.dir, info)
        if info.name in delta_names:
            rows = np.arange(info.rows)
        else:
            rows = np.array([r for r in range(info.rows) if (info.name, r) in keep], np.int64)
        if len(rows) == 0:
            continue
        vecs = ann.reconstruct_vectors(shard.index, rows)
        meta = shard.metadata.take(pa.array(rows))
        values = (
            [None] * len(rows)
            if opts.shard_by == "none"
            else meta.column(opts.shard_by).to_pylist()
        )
        by_value: dict[Any, list[int]] = defaultdict(list)
        for i, v in enumerate(values):
            by_value[v].append(i)
        for v, idx in by_value.items():
            gk = (info.modality, v)
            buffers[gk][0].append(vecs[idx])
            buffers[gk][1].append(meta.take(pa.array(idx)))
            flush(gk, force=False)
    for gk in list(buffers):
        flush(gk, force=True)
    final.sort(key=_shard_order)
    writer.commit(
        final + committer.corpora,
        root=committer.root,
        model=committer.encoder.spec.to_dict(),
        dim=committer.encoder.dim,
        stats=stats,
    )
    committer.report.commits += 1
    return True


# ---------------------------------------------------------------------------------------------
# The entry point


def index_folder(
    folder: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    encoder: Encoder,
    options: IndexOptions | None = None,
) -> IndexReport:
    """Index every image and caption under `folder` into `index_dir`, committing in batches."""
    opts = options or IndexOptions()
    if opts.shard_by is not None and opts.shard_by not in store.PARTITION_KEYS:
        raise InputError(
            f"unknown --shard-by {opts.shard_by!r}: use one of {', '.join(store.PARTITION_KEYS)}"
        )
    if opts.max_rows_per_shard <= 0 or opts.commit_every <= 0 or opts.batch_size <= 0:
        raise InputError("max rows per shard, commit size and batch size must be positive")
    started = time.perf_counter()
    scan = scan_folder(folder)
    if not scan.images and not scan.captions and not scan.audio:
        raise FolderError(
            f"nothing to index in {scan.root}: no images ({', '.join(sorted(IMAGE_EXTS))}), "
            "no audio and no .txt captions found"
        )
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    out = Path(index_dir).expanduser()
    report = IndexReport(index=str(out), problems=list(scan.problems))
    report.failed = len(scan.problems)
    with store.lock_index(out):
        writer = store.Writer(out)
        previous = writer.manifest
        if opts.shard_by is None:
            keys = [s.partition.get("key", "none") for s in previous.shards] if previous else []
            opts = replace(opts, shard_by=keys[0] if keys and not opts.full else "none")
        known = _Known()
        corpora: list[store.ShardInfo] = []
        if previous is not None:
            corpora = _corpus_shards(out, previous)
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
            _check_model(out, previous, encoder)
            known = _read_known(out, previous)
        base = [] if (opts.full or previous is None) else list(previous.shards)
        committer = _Committer(
            writer,
            base,
            root=str(scan.root),
            encoder=encoder,
            options=opts,
            known=known,
            report=report,
        )
        committer.corpora = corpora
        committer.gone = _gone_files(scan, known)

        def stats() -> dict[str, Any]:
            report.seconds = time.perf_counter() - started
            return {"last_run": report.to_dict() | {"problems": len(report.problems)}}

        keep: set[tuple[str, int]] = set()
        new_keys: set[tuple[str, ...]] = set()
        bar = _progress(
            len(scan.images) + len(scan.captions) + len(scan.audio), enabled=opts.progress
        )
        kinds = [_image_kind(encoder)]
        if scan.audio and "audio" in encoder.spec.towers:
            kinds.append(_audio_kind(encoder))
        elif scan.audio:
            report.problems.append(
                Problem(
                    display_path(scan.root),
                    f"{len(scan.audio)} audio files skipped: model {encoder.spec.name} has no "
                    "audio tower (add one with `xretrieve train-audio`)",
                )
            )
        try:
            first = _caption_pass(scan, known, opts, committer, keep, new_keys, report, bar, stats)
            bar.update(0)
            for kind in kinds:
                _media_pass(
                    kind, scan, known, opts, committer, keep, new_keys, first, report, bar, stats
                )
        finally:
            bar.close()
        report.removed = sum(1 for key in known.rows if key not in new_keys)
        if not report.images and not report.texts and not report.audio:
            raise FolderError(
                f"nothing could be indexed in {scan.root}: all {report.failed} files failed "
                f"(first: {report.problems[0].path}: {report.problems[0].reason})"
                if report.problems
                else f"nothing could be indexed in {scan.root}"
            )
        committer.commit(stats=stats())
        landed = _finish(committer, known, keep, stats=stats())
        del landed
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
