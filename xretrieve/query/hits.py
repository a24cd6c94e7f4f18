"""Search results: `Hit` (one row: rank, score, path, metadata) and `Hits` (a ranked list).

Rules this module keeps: hits are immutable values, best first, ranks from 1; `Hits` carries
the per-stage timings of the search that made it, and slicing keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import pyarrow as pa

from xretrieve import store

__all__ = ["Hit", "Hits"]


@dataclass(frozen=True)
class Hit:
    """One search result: where it is, how close it is, and its metadata row."""

    rank: int
    score: float
    path: str
    modality: str
    caption: str | None
    metadata: dict[str, Any] = field(repr=False)
    root: str = field(repr=False, default="")
    #: Component scores when several are fused: {"dense": cosine, "lexical": BM25}.
    components: dict[str, float] = field(repr=False, default_factory=dict)

    @property
    def abs_path(self) -> Path:
        """The file on disk (the indexed folder joined with the stored relative path)."""
        return Path(self.root) / self.path


class Hits(Sequence[Hit]):
    """Search results, best first; convertible to a pyarrow Table or pandas DataFrame.

    `timings` holds the milliseconds spent per stage (encode, filter, ann, lexical, fusion,
    rerank, metadata, total); stages that did not run are absent.
    """

    def __init__(self, hits: list[Hit], timings: dict[str, float] | None = None) -> None:
        self._hits = hits
        self.timings: dict[str, float] = dict(timings or {})

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> Hits: ...
    def __getitem__(self, i: int | slice) -> Hit | Hits:
        return Hits(self._hits[i], self.timings) if isinstance(i, slice) else self._hits[i]

    def __len__(self) -> int:
        return len(self._hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._hits)

    def __repr__(self) -> str:
        return f"Hits({self._hits!r})"

    @property
    def paths(self) -> list[str]:
        """The stored relative path of each hit, in rank order."""
        return [h.path for h in self._hits]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Plain dicts: rank, score, component scores (if fused), then every metadata column."""
        return [
            {
                "rank": h.rank,
                "score": h.score,
                **{f"{name}_score": v for name, v in h.components.items()},
                **h.metadata,
            }
            for h in self._hits
        ]

    def to_arrow(self) -> pa.Table:
        """The hits as a pyarrow Table (rank, score and the metadata columns)."""
        schema = pa.schema([("rank", pa.int32()), ("score", pa.float32()), *store.METADATA_SCHEMA])
        rows = [{"rank": h.rank, "score": h.score, **h.metadata} for h in self._hits]
        return pa.Table.from_pylist(rows, schema=schema)

    def to_pandas(self) -> Any:
        """The hits as a pandas DataFrame (needs pandas installed)."""
        return self.to_arrow().to_pandas()
