"""Indexer: media folder -> encoders -> a new generation of shards and metadata.

Decoding runs in a bounded, order-keeping thread pool so it overlaps the encoder; a file
whose path, size and mtime are unchanged since the last run keeps its vector without being
read, and a file whose bytes hash to a known vector (renamed, copied) is not encoded again.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from xretrieve import ann, store
from xretrieve.encoders import Encoder
from xretrieve.errors import FolderError, MediaError, ModelMismatchError, XRetrieveError
from xretrieve.media import (
    MediaFile,
    Problem,
    Scan,
    content_hash,
    decode_image,
    display_path,
    iter_sidecar_pairs,
    read_captions,
    scan_folder,
)
from xretrieve.types import Vectors

__all__ = ["IndexOptions", "IndexReport", "bounded_map", "index_folder"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class IndexOptions:
    """How to index: batch size, decode workers, shard size, rebuild or reuse."""

    batch_size: int = 32
    workers: int | None = None  # decode threads; None = number of cores
    max_rows_per_shard: int = 1_000_000
    index_type: str | None = None  # FAISS index type override (see xretrieve.ann.plan_index)
    full: bool = False  # ignore the previous generation: re-read and re-encode everything
    progress: bool = True


@dataclass
class IndexReport:
    """What a run did, for the end-of-run summary."""

    index: str
    indexed: int = 0  # newly encoded items
    reused: int = 0  # new paths whose content was already known (renamed / duplicated)
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    images: int = 0
    texts: int = 0
    seconds: float = 0.0
    generation: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return (self.images + self.texts) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "generation": self.generation,
            "images": self.images,
            "texts": self.texts,
            "indexed": self.indexed,
            "reused": self.reused,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "items_per_s": round(self.items_per_s, 2),
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int
) -> Iterator[R]:
    """Map `fn` over `items` in threads, yielding results in order with at most `window` in flight."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass(frozen=True)
class _Known:
    """What the previous generation knows: rows by path, vectors by content hash."""

    rows: dict[str, dict[str, Any]]
    vectors: dict[str, np.ndarray]


def _previous(index_dir: Path, encoder: Encoder) -> tuple[_Known, store.Manifest | None]:
    empty = _Known({}, {})
    try:
        manifest = store.read_manifest(index_dir)
    except XRetrieveError:
        return empty, None
    if manifest.model.get("fingerprint") != encoder.spec.fingerprint:
        raise ModelMismatchError(
            f"{index_dir} was built with model {manifest.model.get('name')} "
            f"(fingerprint {manifest.model.get('fingerprint')}), not {encoder.spec.name} "
            f"({encoder.spec.fingerprint}); use that model, another --index, or --full to rebuild"
        )
    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    for info in manifest.shards:
        shard = store.load_shard(index_dir, info)
        vecs = ann.reconstruct_vectors(shard.index)
        meta = shard.metadata.to_pylist()
        for r, vec in zip(meta, vecs, strict=True):
            key = _row_key(r["path"], r["modality"], r["line"])
            rows[key] = r
            vectors.setdefault(r["content_hash"], vec)
    return _Known(rows, vectors), manifest


def _row_key(path: str, modality: str, line: int | None) -> str:
    return f"{modality}\0{path}\0{line if line is not None else ''}"


def _mtime_ns(row: dict[str, Any]) -> int:
    t = row["mtime"]
    # pyarrow gives timezone-aware datetimes (microseconds); compare at that precision.
    return int(t.timestamp() * 1_000_000) * 1000


def _same_stat(row: dict[str, Any] | None, f: MediaFile) -> bool:
    return (
        row is not None and row["bytes"] == f.size and _mtime_ns(row) == (f.mtime_ns // 1000) * 1000
    )


@dataclass
class _Decoded:
    file: MediaFile
    sha: str = ""
    width: int = 0
    height: int = 0
    pixels: torch.Tensor | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    state: str = "indexed"  # indexed | reused | unchanged


def _image_rows(
    scan: Scan,
    encoder: Encoder,
    known: _Known,
    options: IndexOptions,
    report: IndexReport,
    on_item: Callable[[], None],
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    target = encoder.spec.image_size

    def work(f: MediaFile) -> _Decoded:
        prev = known.rows.get(_row_key(f.rel, "image", None))
        if (
            not options.full
            and _same_stat(prev, f)
            and prev is not None
            and prev["content_hash"] in known.vectors
        ):
            return _Decoded(
                f,
                prev["content_hash"],
                prev["width"],
                prev["height"],
                vector=known.vectors[prev["content_hash"]],
                state="unchanged",
            )
        try:
            data = f.path.read_bytes()
        except OSError as e:
            return _Decoded(f, error=f"cannot read: {e.strerror}")
        sha = content_hash(data)
        if not options.full and sha in known.vectors:
            try:
                dec = decode_image(data, path=f.rel, target_size=target)
            except MediaError as e:
                return _Decoded(f, error=e.reason)
            return _Decoded(
                f, sha, dec.width, dec.height, vector=known.vectors[sha], state="reused"
            )
        try:
            dec = decode_image(data, path=f.rel, target_size=target)
            pixels = encoder.preprocess(dec.image)
        except MediaError as e:
            return _Decoded(f, error=e.reason)
        except (OSError, ValueError, RuntimeError) as e:
            return _Decoded(f, error=f"cannot preprocess: {e}")
        return _Decoded(f, sha, dec.width, dec.height, pixels=pixels)

    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            out = encoder.encode_pixels(torch.stack([p for _, p in batch]))
            for (slot, _), v in zip(batch, out, strict=True):
                vectors[slot] = v
            batch.clear()

    workers = options.workers or os.cpu_count() or 1
    window = max(2 * options.batch_size, 4 * workers)
    for d in bounded_map(work, scan.images, workers=workers, window=window):
        on_item()
        if d.error is not None:
            report.failed += 1
            report.problems.append(Problem(display_path(d.file.path), d.error))
            continue
        rows.append(
            {
                "path": d.file.rel,
                "modality": "image",
                "caption": None,
                "image_path": None,
                "line": None,
                "width": d.width,
                "height": d.height,
                "bytes": d.file.size,
                "mtime": d.file.mtime_ns,
                "content_hash": d.sha,
            }
        )
        setattr(report, d.state, getattr(report, d.state) + 1)
        if d.pixels is not None:
            vectors.append(np.empty(0, np.float32))
            batch.append((len(vectors) - 1, d.pixels))
            if len(batch) >= options.batch_size:
                flush()
        else:
            assert d.vector is not None  # set for unchanged and reused items
            vectors.append(d.vector)
    flush()
    return rows, vectors


def _text_rows(
    scan: Scan, encoder: Encoder, known: _Known, options: IndexOptions, report: IndexReport
) -> tuple[list[dict[str, Any]], list[np.ndarray], dict[str, str]]:
    rows: list[dict[str, Any]] = []
    first_caption: dict[str, str] = {}
    for cap_file, image in iter_sidecar_pairs(scan):
        try:
            lines = read_captions(cap_file.path.read_bytes(), path=cap_file.rel)
        except MediaError as e:
            report.failed += 1
            report.problems.append(Problem(display_path(cap_file.path), e.reason))
            continue
        except OSError as e:
            report.failed += 1
            report.problems.append(
                Problem(display_path(cap_file.path), f"cannot read: {e.strerror}")
            )
            continue
        if image is not None and lines:
            first_caption[image.rel] = lines[0]
        for i, text in enumerate(lines):
            rows.append(
                {
                    "path": cap_file.rel,
                    "modality": "text",
                    "caption": text,
                    "image_path": image.rel if image else None,
                    "line": i,
                    "width": None,
                    "height": None,
                    "bytes": len(text.encode()),
                    "mtime": cap_file.mtime_ns,
                    "content_hash": content_hash(text.encode()),
                }
            )
    vectors: list[np.ndarray] = [np.empty(0, np.float32)] * len(rows)
    todo: list[int] = []
    for i, r in enumerate(rows):
        prev = known.rows.get(_row_key(r["path"], "text", r["line"]))
        vec = None if options.full else known.vectors.get(r["content_hash"])
        if vec is None:
            todo.append(i)
            report.indexed += 1
            continue
        vectors[i] = vec
        same = prev is not None and prev["content_hash"] == r["content_hash"]
        if same:
            report.unchanged += 1
        else:
            report.reused += 1
    if todo:
        encoded = encoder.encode_texts([rows[i]["caption"] for i in todo])
        for i, v in zip(todo, encoded, strict=True):
            vectors[i] = v
    return rows, vectors, first_caption


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in store.METADATA_SCHEMA.names}
    cols["shard"] = [""] * len(rows)
    cols["row"] = [0] * len(rows)
    arrays = []
    for fld in store.METADATA_SCHEMA:
        if fld.name == "mtime":
            micros = [None if t is None else t // 1000 for t in cols["mtime"]]
            arrays.append(pa.array(micros, pa.int64()).cast(fld.type))
        else:
            arrays.append(pa.array(cols[fld.name], fld.type))
    return pa.Table.from_arrays(arrays, schema=store.METADATA_SCHEMA)


def _stack(vectors: list[np.ndarray], dim: int) -> Vectors:
    if not vectors:
        return np.empty((0, dim), np.float32)
    return np.ascontiguousarray(np.stack(vectors).astype(np.float32, copy=False))


def index_folder(
    folder: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    encoder: Encoder,
    options: IndexOptions | None = None,
) -> IndexReport:
    """Index every image and caption under `folder` into `index_dir` (a new generation)."""
    opts = options or IndexOptions()
    started = time.perf_counter()
    scan = scan_folder(folder)
    if not scan.images and not scan.captions:
        raise FolderError(
            f"nothing to index in {scan.root}: no images ({', '.join(sorted(_exts()))}) "
            "and no .txt captions found"
        )
    out = Path(index_dir).expanduser()
    report = IndexReport(index=str(out), problems=list(scan.problems))
    with store.lock_index(out):
        known, previous = _previous(out, encoder) if not opts.full else (_Known({}, {}), None)
        bar = _progress(len(scan.images), enabled=opts.progress)
        try:
            img_rows, img_vecs = _image_rows(scan, encoder, known, opts, report, bar.update)
        finally:
            bar.close()
        txt_rows, txt_vecs, first_caption = _text_rows(scan, encoder, known, opts, report)
        for r in img_rows:
            r["caption"] = first_caption.get(r["path"])
        present = {_row_key(r["path"], r["modality"], r["line"]) for r in img_rows + txt_rows}
        report.removed = sum(1 for key in known.rows if key not in present)
        report.images, report.texts = len(img_rows), len(txt_rows)
        if not img_rows and not txt_rows:
            raise FolderError(
                f"nothing could be indexed in {scan.root}: all {report.failed} files failed "
                f"(first: {report.problems[0].path}: {report.problems[0].reason})"
                if report.problems
                else f"nothing could be indexed in {scan.root}"
            )
        if (
            previous is not None
            and report.unchanged == len(img_rows) + len(txt_rows)
            and not report.removed
        ):
            # Nothing changed: keep the current generation rather than rewrite identical shards.
            report.generation = previous.generation
            report.seconds = time.perf_counter() - started
            return report
        dim = encoder.dim
        payloads = [
            store.ShardPayload("image", _stack(img_vecs, dim), _table(img_rows)),
            store.ShardPayload("text", _stack(txt_vecs, dim), _table(txt_rows)),
        ]
        report.seconds = time.perf_counter() - started
        manifest = store.write_generation(
            out,
            root=str(scan.root),
            model=encoder.spec.to_dict(),
            dim=dim,
            payloads=[p for p in payloads if len(p.vectors)],
            stats={"last_run": report.to_dict() | {"problems": len(report.problems)}},
            max_rows_per_shard=opts.max_rows_per_shard,
            index_type=opts.index_type,
        )
    report.generation = manifest.generation
    report.seconds = time.perf_counter() - started
    return report


def _exts() -> set[str]:
    from xretrieve.media import IMAGE_EXTS

    return set(IMAGE_EXTS)


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

    return tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True)
