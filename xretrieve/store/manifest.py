"""Store: an index on disk — a versioned manifest over shards of FAISS + Parquet files.

Layout (format v1)::

    INDEX/
      manifest.json               written last, atomically: what readers trust
      shards/<shard>.g<N>.faiss   one FAISS index per shard (ids = row numbers)
      shards/<shard>.g<N>.parquet one metadata row per vector, same order
      shards/<shard>.g<N>.deleted.npy  rows of the shard that no longer count (tombstones)
      readers/<id>.pin            one per live `Reader`: the files of the generation it reads
      .lock                       held by the one writer

This module holds what the files *say*: the manifest and its shard records, the metadata
table's schema (and the one function that builds its rows), and the check that a model's
vectors are comparable with an index's. Writing them is `writer`'s job, reading them back
`reader`'s.

Deleting or replacing a few rows of a big shard does not rewrite it: the new generation names
the same two files plus a list of deleted row numbers, which searches skip. A manifest that
uses such lists says format 2, so an older xretrieve refuses it instead of showing the rows.

Metadata columns added after v1 (`folder`, `year`, `path_bytes`) are additive: v1 shards are
filled in on read (`upgrade_metadata`), and readers of v1 ignore the extra columns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xretrieve._fs import sha256_file
from xretrieve._types import Modality
from xretrieve.errors import (
    IndexCorruptError,
    IndexNotFoundError,
    IndexStoreError,
    ModelMismatchError,
)
from xretrieve.store.safety import MANIFEST_MAX_BYTES, read_capped
from xretrieve.store.schema import validate_manifest

__all__ = [
    "FACT_COLUMNS",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "METADATA_SCHEMA",
    "PARTITION_KEYS",
    "READERS_DIR",
    "SHARDS_DIR",
    "STATS_COLUMNS",
    "Manifest",
    "ShardFile",
    "ShardInfo",
    "check_model",
    "describe_file",
    "metadata_columns",
    "metadata_row",
    "metadata_table",
    "partition_stats",
    "read_manifest",
    "shard_number",
    "top_folder",
    "upgrade_metadata",
]

FORMAT_VERSION = 2
#: The format a manifest without deleted-row lists is written in (readable by older versions).
PLAIN_FORMAT = 1
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
#: The partition keys a shard may be split on: a metadata column, or none.
PARTITION_KEYS = ("none", "folder", "year")
#: Columns whose min/max each shard records in `ShardInfo.partition["stats"]`.
STATS_COLUMNS = ("mtime", "width", "height", "bytes", "year", "duration")


@dataclass(frozen=True)
class ShardFile:
    """One file of a shard, with what a reader checks it against."""

    name: str
    bytes: int
    sha256: str


def describe_file(path: Path) -> ShardFile:
    """The `ShardFile` record of a file on disk: its name, size and sha256."""
    return ShardFile(name=path.name, bytes=path.stat().st_size, sha256=sha256_file(path))


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
        """Items in the index by modality (deleted rows not counted)."""
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.modality] = out.get(s.modality, 0) + s.live_rows
        return out

    def shard_files(self) -> set[str]:
        """The names of every file the manifest's shards consist of."""
        return {f.name for s in self.shards for f in s.files()}

    def to_json(self) -> str:
        """The manifest file's text."""
        d = asdict(self)
        d = {"format": "xretrieve-index", **d}
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, where: object = MANIFEST) -> Manifest:
        """Parse a manifest file's text; `where` names it in errors."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != "xretrieve-index":
                raise ValueError("not an xretrieve manifest")
            version = d.get("format_version")
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise IndexStoreError(
                    f"{where}: index format v{version} is newer than this xretrieve reads "
                    f"(v{FORMAT_VERSION}); upgrade xretrieve"
                )
            # Every field's type and range, and every file name, before anything uses them.
            validate_manifest(d, where=where)
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
                format_version=int(d["format_version"]),
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
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            reason = f"{type(e).__name__}: {e}"[:200]  # a huge number's digits, say
            raise IndexCorruptError(
                f"{where}: index damaged ({reason}); rebuild the index from scratch"
            ) from None


# Shards written before partitions existed: one partition, no statistics (so never pruned).
_UNKNOWN_PARTITION: dict[str, Any] = {"key": "none", "value": None, "stats": {}}


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate an index's manifest."""
    d = Path(index_dir).expanduser()
    mpath = d / MANIFEST
    if not os.path.lexists(mpath):
        if d.is_dir() and any(d.iterdir()):
            raise IndexNotFoundError(f"{d} is not an xretrieve index (no {MANIFEST})")
        raise IndexNotFoundError(f"no index at {d}; index a folder into it first")
    try:
        # Not through a symlink, not past a size no manifest reaches (a FIFO never blocks).
        text = read_capped(d, MANIFEST, cap=MANIFEST_MAX_BYTES).decode("utf-8")
    except UnicodeDecodeError as e:
        raise IndexCorruptError(f"{mpath}: index damaged: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise IndexCorruptError(f"{mpath} cannot be read: {e.strerror}") from e
    return Manifest.from_json(text, where=mpath)


def check_model(
    manifest: Manifest, model: Mapping[str, Any], *, where: object, audio: bool = True
) -> None:
    """Refuse with `ModelMismatchError` a model whose vectors are not comparable with the index's.

    `model` is a model's description as the manifest records it (`ModelSpec.to_dict()`):
    its `fingerprint` (image and text towers) must be the index's, and, when `audio` is set
    and the index holds audio shards, so must its `audio_fingerprint`.
    """
    built = manifest.model
    if model.get("fingerprint") != built.get("fingerprint"):
        raise ModelMismatchError(
            f"{where} was built with model {built.get('name')} (fingerprint "
            f"{built.get('fingerprint')}), but {model.get('name')} has fingerprint "
            f"{model.get('fingerprint')}: vectors from different models are not comparable; "
            "use the model that built the index, or rebuild the index with this one"
        )
    has_audio = any(s.modality == "audio" for s in manifest.shards)
    if audio and has_audio and model.get("audio_fingerprint") != built.get("audio_fingerprint"):
        raise ModelMismatchError(
            f"{where} holds audio embedded by another audio tower "
            f"({built.get('audio_fingerprint')}) than {model.get('name')}'s "
            f"({model.get('audio_fingerprint')}): use the model that built the index, "
            "or rebuild the index with this one"
        )


def shard_number(name: str) -> int:
    """The number at the end of a shard's name (`image-00012` -> 12), or -1."""
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# ---------------------------------------------------------------------------------------------
# Metadata rows


def top_folder(rel: str) -> str:
    """The first component of a relative POSIX path, or "" for a file at the root."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def metadata_row(
    *,
    path: str,
    modality: Modality,
    bytes: int,
    mtime_us: int,
    content_hash: str,
    **columns: Any,
) -> dict[str, Any]:
    """One item's metadata row, by column: `folder` and `year` follow from `path` and `mtime`.

    `columns` sets the others (`caption`, `line`, `path_bytes`, facts ...); those not given
    are null, and the writer fills in `shard` and `row`.
    """
    unknown = sorted(set(columns) - set(METADATA_SCHEMA.names))
    if unknown:
        raise IndexStoreError(f"no metadata column named {', '.join(unknown)}")
    return {
        **dict.fromkeys(METADATA_SCHEMA.names),
        "path": path,
        "modality": modality,
        "bytes": bytes,
        "mtime": mtime_us,
        "content_hash": content_hash,
        "folder": top_folder(path),
        "year": (_EPOCH + timedelta(microseconds=mtime_us)).year,
        **columns,
    }


def metadata_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A `METADATA_SCHEMA` table of rows (as `metadata_row` makes them; mtime in microseconds)."""
    names = [c for c in METADATA_SCHEMA.names if c not in ("shard", "row")]
    return metadata_columns({c: [r.get(c) for r in rows] for c in names}, len(rows))


def metadata_columns(columns: Mapping[str, Any], num_rows: int) -> pa.Table:
    """A `METADATA_SCHEMA` table from whole columns (Arrow arrays or lists); missing ones null.

    `shard` and `row` default to placeholders the writer replaces.
    """
    unknown = sorted(set(columns) - set(METADATA_SCHEMA.names))
    if unknown:
        raise IndexStoreError(f"no metadata column named {', '.join(unknown)}")
    placeholders = {"shard": [""] * num_rows, "row": [0] * num_rows}
    arrays = []
    for fld in METADATA_SCHEMA:
        col = columns.get(fld.name, placeholders.get(fld.name))
        if col is None:
            arr = pa.nulls(num_rows, fld.type)
        elif isinstance(col, (pa.Array, pa.ChunkedArray)):
            arr = col if col.type == fld.type else col.cast(fld.type)
        elif fld.name == "mtime":  # microseconds since the epoch
            arr = pa.array(col, pa.int64()).cast(fld.type)
        else:
            arr = pa.array(col, fld.type)
        if len(arr) != num_rows:
            raise IndexStoreError(f"metadata column {fld.name} has {len(arr)} rows, not {num_rows}")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=METADATA_SCHEMA)


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
