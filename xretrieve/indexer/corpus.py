"""Caption corpora: index a file of captions on its own, for image -> caption lookup.

    add_captions("indexes/demo", "captions.txt")        # one caption a line
    add_captions("indexes/demo", "caps.jsonl", column="caption")
    add_captions("indexes/demo", "caps.parquet", column="text")

Captions are read in batches and encoded as they stream, their vectors written to a
memory-mapped temporary file, so memory holds one batch of text plus the compact Arrow
columns of metadata (about 60 bytes a caption), not a Python object per caption. They
become text shards of a new generation (`store.write_generation(keep=current shards)`)
whose metadata rows say `path` = the corpus file (absolute), `line` = its 0-based line
(text, JSON Lines) or row (Parquet), `caption` = the text. Adding the same file again
replaces its earlier shards.

Blank lines (and null or blank captions) are skipped and counted; a line that is not
UTF-8, a JSON line that does not parse or lacks the column, or a missing column stops the
whole add with `MediaError` / `InputError` naming the file and line: nothing is written.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xretrieve import store
from xretrieve._types import Vectors
from xretrieve.encoders import EncoderLike
from xretrieve.errors import InputError, MediaError
from xretrieve.media.image import content_hash

__all__ = ["CorpusReport", "add_captions", "read_corpus"]

#: Captions encoded per batch (and held in memory at once as text).
DEFAULT_BATCH = 4096
#: Longest caption kept, in characters; longer ones are cut (the text encoder reads far less).
MAX_CAPTION_CHARS = 2000
_TEXT_SUFFIXES = (".txt", ".text", ".csv", ".tsv", ".lst", "")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class CorpusReport:
    """What `add_captions` did."""

    corpus: str
    index: str
    captions: int = 0
    skipped_blank: int = 0
    replaced_shards: int = 0
    generation: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.encode_seconds if self.encode_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "captions_per_s": round(self.captions_per_s, 1)}


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def _clean(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    t = " ".join(text.split())  # newlines and tabs inside a caption become single spaces
    return t[:MAX_CAPTION_CHARS] if t else None


#: Bytes of a plain-text line read before it is cut: a caption keeps MAX_CAPTION_CHARS
#: characters, and this leaves room for the white space that cleaning folds away.
MAX_TEXT_LINE_BYTES = 64 << 10
#: A JSONL line longer than this is refused (it cannot be parsed once cut).
MAX_JSON_LINE_BYTES = 1 << 20


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """Each line's first `limit` bytes and whether it was cut; never holds more than that.

    A 200 MB line must not become a 200 MB string (and then a list of its words): the rest
    of an over-long line is read in blocks and dropped.
    """
    while True:
        raw = f.readline(limit)
        if not raw:
            return
        if raw.endswith(b"\n") or len(raw) < limit:
            yield raw, False
            continue
        while True:  # skip the rest of the line
            rest = f.readline(limit)
            if not rest or rest.endswith(b"\n"):
                break
        yield raw, True


def _decode(raw: bytes, cut: bool, path: Path, n: int) -> str:
    # A cut line may end inside a multi-byte character: the incremental decoder leaves
    # that partial character out, and still refuses bytes that are not UTF-8.
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(raw, final=not cut)
    except UnicodeDecodeError as e:
        raise MediaError(
            path,
            f"line {n} is not UTF-8 ({e.reason} at byte {e.start}); "
            "convert the file, e.g. `iconv -f latin1 -t utf-8`",
        ) from e


def _read_lines(path: Path, kind: str, column: str) -> Iterator[tuple[int, str | None]]:
    limit = MAX_TEXT_LINE_BYTES if kind == "text" else MAX_JSON_LINE_BYTES
    with open(path, "rb") as f:
        for i, (raw, cut) in enumerate(_lines(f, limit)):
            if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            line = _decode(raw, cut, path, i + 1)
            if kind == "text":
                yield i, _clean(line)
                continue
            if cut:
                raise MediaError(path, f"line {i + 1} is longer than {limit:,} bytes")
            if not line.strip():
                yield i, None
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MediaError(path, f"line {i + 1} is not valid JSON ({e.msg})") from e
            except RecursionError as e:
                raise MediaError(path, f"line {i + 1} nests too deeply to be a caption") from e
            if not isinstance(obj, dict) or column not in obj:
                keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                raise InputError(
                    f"{path}: line {i + 1} has no {column!r} field (it has: {keys[:200]}); "
                    "name the field that holds the captions",
                    code=InputError.CAPTION_COLUMN,
                )
            value = obj[column]
            if value is not None and not isinstance(value, str):
                raise InputError(f"{path}: line {i + 1}: {column!r} is not a string")
            yield i, _clean(value)


def _read_parquet(path: Path, column: str, batch: int) -> Iterator[tuple[int, str | None]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise MediaError(path, f"not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    if column not in names:
        raise InputError(
            f"{path} has no column {column!r}; its columns are {', '.join(names)} "
            "(name the one that holds the captions)",
            code=InputError.CAPTION_COLUMN,
        )
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {column!r} is {kind}, not text")
    row = 0
    batches = pf.iter_batches(batch_size=batch, columns=[column])
    while True:
        try:
            rb = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise MediaError(path, f"row {row + 1} onwards cannot be read ({e})") from e
        if rb is None:
            return
        for value in rb.column(0).to_pylist():
            yield row, _clean(value)
            row += 1


def read_corpus(
    path: str | os.PathLike[str], *, column: str = "caption", batch_size: int = DEFAULT_BATCH
) -> Iterator[tuple[list[int], list[str], int]]:
    """Batches of (line numbers, captions, blanks skipped) from a text, JSONL or Parquet file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MediaError(p, "no such file" if not p.exists() else "not a file")
    kind = _kind(p)
    rows = (
        _read_parquet(p, column, batch_size) if kind == "parquet" else _read_lines(p, kind, column)
    )
    lines: list[int] = []
    caps: list[str] = []
    blank = 0
    for i, cap in rows:
        if cap is None:
            blank += 1
            continue
        lines.append(i)
        caps.append(cap)
        if len(caps) >= batch_size:
            yield lines, caps, blank
            lines, caps, blank = [], [], 0
    if caps or blank:
        yield lines, caps, blank


def _upper_bound(path: Path) -> int:
    """Rows the corpus can hold at most (lines, or Parquet rows): sizes the vector file."""
    if _kind(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _metadata(
    corpus: str,
    mtime: datetime,
    lines: list[pa.Array],
    caps: list[pa.Array],
    hashes: list[pa.Array],
) -> pa.Table:
    """The text-shard metadata of the captions, column by column (no per-row dicts)."""
    caption = pa.concat_arrays(caps)
    n = len(caption)
    return store.metadata_columns(
        {
            "path": pa.repeat(pa.scalar(corpus, pa.string()), n),
            "modality": pa.repeat(pa.scalar("text", pa.string()), n),
            "caption": caption,
            "line": pa.concat_arrays(lines),
            "bytes": pc.binary_length(caption),
            "mtime": pa.repeat(pa.scalar(mtime, pa.timestamp("us", tz="UTC")), n),
            "content_hash": pa.concat_arrays(hashes),
            # `folder` stays null: a corpus file lies outside the indexed folder.
            "year": pa.repeat(pa.scalar(mtime.year, pa.int32()), n),
        },
        n,
    )


def _only_from(index_dir: Path, info: store.ShardInfo, corpus: str) -> bool:
    meta = index_dir / store.SHARDS_DIR / info.meta_file.name
    paths = pq.read_table(meta, columns=["path"]).column("path")
    return bool(paths.null_count == 0 and pc.all(pc.equal(paths, corpus)).as_py())


def _encoder_for(
    index_dir: Path, manifest: store.Manifest, encoder: EncoderLike | None
) -> EncoderLike:
    from xretrieve.encoders.factory import load_encoder

    model = manifest.model
    enc = encoder or load_encoder(
        model["name"],
        pretrained=model.get("pretrained"),
        precision=str(model.get("precision") or "fp32"),
    )
    # Captions are text: the audio tower, if any, does not matter.
    store.check_model(manifest, enc.spec.to_dict(), where=index_dir, audio=False)
    return enc


def add_captions(
    index_dir: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    *,
    encoder: EncoderLike | None = None,
    column: str = "caption",
    batch_size: int = DEFAULT_BATCH,
    max_rows_per_shard: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
) -> CorpusReport:
    """Encode every caption of `corpus` and add them to the index as text shards.

    The encoder defaults to the model recorded in the index (and must match its
    fingerprint). Holds the index's writer lock throughout; the new generation keeps every
    current shard except earlier shards of this same corpus file.
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    out = Path(index_dir).expanduser()
    src = Path(corpus).expanduser().resolve()
    report = CorpusReport(corpus=str(src), index=str(out))
    started = time.perf_counter()
    manifest = store.read_manifest(out)
    enc = _encoder_for(out, manifest, encoder)
    with store.lock_index(out):
        manifest = store.read_manifest(out)  # the generation current under the lock
        capacity = _upper_bound(src) if src.is_file() else 0
        fd, tmp_name = tempfile.mkstemp(prefix=".corpus-", suffix=".f32.tmp", dir=out)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            vectors: Vectors = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(max(1, capacity), manifest.dim)
            )
            lines: list[pa.Array] = []
            caps: list[pa.Array] = []
            hashes: list[pa.Array] = []
            n = 0
            for batch_lines, batch_caps, blank in read_corpus(
                src, column=column, batch_size=batch_size
            ):
                report.skipped_blank += blank
                if not batch_caps:
                    continue
                t0 = time.perf_counter()
                vectors[n : n + len(batch_caps)] = enc.encode_texts(batch_caps)
                report.encode_seconds += time.perf_counter() - t0
                lines.append(pa.array(batch_lines, pa.int32()))
                caps.append(pa.array(batch_caps, pa.string()))
                hashes.append(pa.array([content_hash(c.encode()) for c in batch_caps]))
                n += len(batch_caps)
                if progress is not None:
                    progress(len(batch_caps))
            if n == 0:
                raise InputError(
                    f"{src} holds no captions ({report.skipped_blank} blank lines); "
                    "give a file with one caption a line, or JSONL / Parquet with a caption column",
                    code=InputError.CAPTION_COLUMN,
                )
            report.captions = n
            mtime = datetime.fromtimestamp(src.stat().st_mtime, tz=UTC)
            table = _metadata(str(src), mtime, lines, caps, hashes)
            keep = [
                s
                for s in manifest.shards
                if not (s.modality == "text" and _only_from(out, s, str(src)))
            ]
            report.replaced_shards = len(manifest.shards) - len(keep)
            stats = dict(manifest.stats)
            stats["last_corpus"] = report.to_dict()
            written = store.write_generation(
                out,
                root=manifest.root,
                model=manifest.model,
                dim=manifest.dim,
                payloads=[store.ShardPayload("text", vectors[:n], table)],
                stats=stats,
                max_rows_per_shard=max_rows_per_shard,
                keep=keep,
            )
            del vectors
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    report.generation = written.generation
    report.seconds = time.perf_counter() - started
    return report
