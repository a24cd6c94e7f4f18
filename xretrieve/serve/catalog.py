"""The served indexes: each one's model, loaded once, and the generation requests run on.

Rules kept here:

- A model is loaded once at start and shared by every index built with it (same
  fingerprints); a new generation reuses it.
- A request takes the current `Generation` once and uses it to the end: its own `Index`
  (which pins that generation's files), its id tables and its facets. A new generation is
  a new `Generation` object swapped in whole; a request in flight keeps the one it took, and
  that generation's files stay pinned until the last request holding it lets it go.
- A new generation is noticed by the manifest file's identity (inode, size, mtime), checked
  at most every `refresh_interval` seconds; one request builds the new `Generation` while
  the others go on with the old one. A generation that cannot be opened (another model,
  damaged files) is logged and the old one kept.
- Shards are loaded (and FAISS direct maps built) before a generation is served, so
  concurrent requests never race to load them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xretrieve import store
from xretrieve.encoders import EncoderLike
from xretrieve.errors import XRetrieveError
from xretrieve.query import Index, open_index
from xretrieve.serve.ids import ShardIds, parse_id, shard_key
from xretrieve.store import ann

__all__ = ["Generation", "ItemRef", "ServedIndex", "open_served"]

log = logging.getLogger("xretrieve.serve")
# Distinct values listed per facet (a folder facet of 50k names helps no menu).
_FACET_VALUES = 500


@dataclass(frozen=True)
class ItemRef:
    """One item of a generation: its shard, row and metadata row."""

    shard: store.LoadedShard
    row: int
    metadata: dict[str, Any]

    def vector(self) -> np.ndarray:
        """The item's stored vector, shape (1, d): what "more like this" searches with."""
        return ann.reconstruct_vectors(self.shard.index, np.asarray([self.row], np.int64))


@dataclass
class Generation:
    """One generation of one index, as requests see it: immutable once served."""

    name: str
    index: Index
    ids: dict[str, ShardIds]
    facets: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The generation number from the manifest."""
        return self.index.manifest.generation

    def find(self, item: str) -> ItemRef | None:
        """The item with this id, or None (also for anything that is not an id)."""
        digest = parse_id(item)
        if digest is None:
            return None
        for shard in self.index.shards():
            row = self.ids[shard_key(shard)].find(digest, shard.deleted)
            if row is not None:
                meta = shard.metadata.slice(row, 1).to_pylist()[0]
                return ItemRef(shard, row, meta)
        return None

    def describe(self) -> dict[str, Any]:
        """What GET /api/indexes says about this index."""
        m = self.index.manifest
        keys = {s.partition.get("key", "none") for s in m.shards}
        key = keys.pop() if len(keys) == 1 else "none"
        values = sorted(
            {
                str(s.partition.get("value"))
                for s in m.shards
                if s.partition.get("value") is not None
            }
        )
        rows = {"image": 0, "text": 0, "audio": 0, **m.rows_by_modality()}
        return {
            "name": self.name,
            "model": m.model,
            "rows": rows,
            "generation": m.generation,
            "partition": {"key": key, "values": values if key != "none" else []},
            "facets": self.facets,
        }


def _facets(shards: list[store.LoadedShard]) -> dict[str, Any]:
    """Filter menus: distinct folders and years, min/max of sizes and dates."""
    if not shards:
        return {}
    table = pa.concat_tables(
        [s.metadata.select(["folder", "year", "width", "height", "bytes", "mtime"]) for s in shards]
    )
    out: dict[str, Any] = {}
    for col in ("folder", "year"):
        values = pc.unique(table.column(col).drop_null()).to_pylist()
        out[col] = sorted(values)[:_FACET_VALUES]
    for col in ("width", "height", "bytes", "mtime"):
        mm = pc.min_max(table.column(col)).as_py()
        lo, hi = mm["min"], mm["max"]
        if col == "mtime" and lo is not None:
            lo, hi = lo.isoformat(), hi.isoformat()
        out[col] = [lo, hi]
    return out


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path / store.MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ServedIndex:
    """An index served under a name: its encoder and its current generation."""

    def __init__(self, name: str, index: Index, *, refresh_interval: float) -> None:
        self.name = name
        self.path = index.path
        self.encoder: EncoderLike = index.encoder
        self.refresh_interval = refresh_interval
        self._ids: dict[str, ShardIds] = {}
        self._lock = threading.Lock()
        self._stat = _stat_key(self.path)
        self._checked = time.monotonic()
        self._current = self._prepare(index)

    def _prepare(self, index: Index) -> Generation:
        """Load every shard, build its ids and direct map, gather facets: ready to serve."""
        shards = index.shards()
        ids = {}
        for s in shards:
            key = shard_key(s)
            ids[key] = self._ids.get(key) or ShardIds.of(s.metadata)
            if s.info.rows:
                ann.reconstruct_vectors(s.index, np.zeros(1, np.int64))  # builds IVF direct maps
        self._ids = ids  # tables of shards no longer served are dropped
        return Generation(self.name, index, ids, _facets(shards))

    @property
    def latest(self) -> Generation:
        """The generation served now, without checking for a newer one."""
        return self._current

    def current(self) -> Generation:
        """The generation a request should run on (the newest that could be opened)."""
        now = time.monotonic()
        if now - self._checked >= self.refresh_interval and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                stat = _stat_key(self.path)
                if stat != self._stat:
                    self._stat = stat
                    self._swap()
            finally:
                self._lock.release()
        return self._current

    def _swap(self) -> None:
        old = self._current
        try:
            manifest = store.read_manifest(self.path)
            if manifest.generation == old.number:
                return
            store.check_model(manifest, self.encoder.spec.to_dict(), where=self.path)
            self._current = self._prepare(Index(self.path, manifest, self.encoder))
        except XRetrieveError as e:
            log.warning("%s: staying on generation %d: %s", self.name, old.number, e)
            return
        log.info("%s: now serving generation %d", self.name, self._current.number)
        # Not closed here: requests in flight may still hold it; the pin goes with the object.

    def close(self) -> None:
        """Let writers remove the files of the generation served last."""
        self._current.index.close()


def open_served(
    paths: Mapping[str, Path],
    *,
    device: str,
    refresh_interval: float,
    precision: str | None = None,
) -> dict[str, ServedIndex]:
    """Open each index, loading each distinct model (and precision) once.

    Queries run in `precision`, by default each index's own.
    """
    encoders: dict[tuple[Any, Any, Any], EncoderLike] = {}
    out: dict[str, ServedIndex] = {}
    for name, path in paths.items():
        manifest = store.read_manifest(path)
        want = precision or manifest.model.get("precision") or "fp32"
        key = (manifest.model.get("fingerprint"), manifest.model.get("audio_fingerprint"), want)
        enc = encoders.get(key)
        if enc is None:
            index = open_index(path, device=device, precision=want)
            encoders[key] = index.encoder
        else:
            store.check_model(manifest, enc.spec.to_dict(), where=path)
            index = Index(Path(path).expanduser(), manifest, enc)
        out[name] = ServedIndex(name, index, refresh_interval=refresh_interval)
    return out
