"""What the index already holds: the previous generation's rows, by item and by content.

Planning reads only the metadata columns of the stored shards, never their vectors. An item
is identified across runs by its modality and path (and line, for a caption); a content
hash maps to one stored vector, so a renamed, copied or touched file is not encoded again.
A row listed as deleted still lends its vector, but is not itself in the index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xretrieve import store
from xretrieve.media.scan import Scan

__all__ = ["Known", "Ref", "Stored", "corpus_shards", "gone_files", "item_key", "read_known"]

Ref = tuple[store.ShardInfo, int]  # a stored row: its shard and row number


@dataclass(slots=True)
class Stored:
    """A stored row, as far as planning needs it."""

    ref: Ref
    size: int
    mtime_us: int
    sha: str
    caption: str | None
    facts: dict[str, Any]  # width/height of an image, duration/sample_rate/channels of audio
    image_path: str | None = None

    @property
    def number(self) -> int:
        """Its shard's number: a killed run may have left an older copy in a lower one."""
        return store.shard_number(self.ref[0].name)


@dataclass
class Known:
    """The previous generation's rows by key, and where each content hash's vector lives."""

    shards: list[store.ShardInfo] = field(default_factory=list)
    rows: dict[tuple[str, ...], list[Stored]] = field(default_factory=dict)
    texts_by_path: dict[str, list[tuple[int, Stored]]] = field(default_factory=dict)
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


def read_known(index_dir: Path, manifest: store.Manifest) -> Known:
    """The rows of `manifest`'s shards, read from their metadata columns alone."""
    known = Known(shards=list(manifest.shards))
    for info in manifest.shards:
        t = store.read_metadata(index_dir, info, columns=_PLAN_COLUMNS)
        cols = {name: _column(t, name) for name in _PLAN_COLUMNS}
        deleted = set(store.read_deleted(index_dir, info).tolist())
        for row in range(t.num_rows):
            raw = cols["path_bytes"][row]
            rel = os.fsdecode(raw) if raw is not None else cols["path"][row]
            line = cols["line"][row]
            s = Stored(
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


def corpus_shards(index_dir: Path, manifest: store.Manifest) -> list[store.ShardInfo]:
    """Text shards added by `add_captions`: their rows name a corpus file by absolute path."""
    found = []
    for info in manifest.shards:
        if info.modality != "text":
            continue
        paths = store.read_metadata(index_dir, info, columns=("path",)).column("path")
        if paths.null_count == 0 and pc.all(pc.starts_with(paths, "/")).as_py():
            found.append(info)
    return found


def item_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The identity of an item across runs: modality and path (and line, for a caption)."""
    rel = os.fsdecode(row["path_bytes"]) if row.get("path_bytes") is not None else row["path"]
    if row["modality"] == "text":
        return ("text", rel, str(row["line"]))
    return (row["modality"], rel)


def gone_files(scan: Scan, known: Known) -> list[Ref]:
    """Stored rows whose file is no longer in the folder at all."""
    present = {(f.modality, f.rel) for f in (*scan.images, *scan.audio)}
    present |= {("text", f.rel) for f in scan.captions}
    return [s.ref for key, rows in known.rows.items() if key[:2] not in present for s in rows]
