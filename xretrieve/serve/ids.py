"""Item ids: stable names for indexed files that survive new generations and shard merges.

Rules kept here:

- An id is the first 20 hex digits of sha256(path NUL content_hash) of the item's metadata
  row: the same file (same relative path, same bytes) keeps its id in every generation,
  whatever shard or row it lands in; a changed file gets a new id. Never a row number.
- Each shard's ids are computed once per shard file (`ShardIds`, kept while the shard is
  served) and looked up by binary search; a row the generation deletes is never found.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from xretrieve import store
from xretrieve._types import Ids

__all__ = ["ID_HEX", "ID_PATTERN", "ShardIds", "item_id", "parse_id", "shard_key"]

#: Hex digits in an id (80 bits: collisions need ~10^12 items).
ID_HEX = 20
ID_PATTERN = re.compile(rf"[0-9a-f]{{{ID_HEX}}}")


def _digest(path: str, content_hash: str | None) -> bytes:
    key = f"{path}\x00{content_hash or ''}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).digest()[: ID_HEX // 2]


def item_id(path: str, content_hash: str | None) -> str:
    """The id of the item with this relative path and content hash."""
    return _digest(path, content_hash).hex()


def parse_id(text: str) -> bytes | None:
    """The digest an id stands for, or None when `text` is not an id."""
    return bytes.fromhex(text) if ID_PATTERN.fullmatch(text) else None


@dataclass(frozen=True)
class ShardIds:
    """One shard's ids, sorted, with the row each belongs to."""

    digests: npt.NDArray[np.bytes_]
    rows: Ids

    @classmethod
    def of(cls, metadata: pa.Table) -> ShardIds:
        """The ids of every row of a shard's metadata table."""
        paths = metadata.column("path").to_pylist()
        hashes = metadata.column("content_hash").to_pylist()
        digests = np.array(
            [_digest(p or "", h) for p, h in zip(paths, hashes, strict=True)],
            dtype=f"S{ID_HEX // 2}",
        )
        order = np.argsort(digests, kind="stable")
        return cls(digests[order], order.astype(np.int64))

    def find(self, digest: bytes, deleted: Ids) -> int | None:
        """The first row with this digest that is not in `deleted` (sorted), or None."""
        key = np.array(digest, dtype=self.digests.dtype)
        at = int(np.searchsorted(self.digests, key, side="left"))
        while at < len(self.digests) and self.digests[at] == key:
            row = int(self.rows[at])
            i = int(np.searchsorted(deleted, row))
            if i >= len(deleted) or deleted[i] != row:
                return row
            at += 1
        return None

    @property
    def nbytes(self) -> int:
        """Memory held by the table."""
        return int(self.digests.nbytes + self.rows.nbytes)


def shard_key(shard: store.LoadedShard) -> str:
    """What identifies a shard's rows across generations: its metadata file's name."""
    return shard.info.meta_file.name
