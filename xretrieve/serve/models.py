"""The JSON shapes of the API: requests and responses, every field documented for /docs.

Rules kept here: requests refuse unknown fields (a typo is a 422, not a silent default);
bounds that depend on the service's settings (`k`, `offset`) are checked by the handler
against `ServeConfig` (400), the rest here (422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from xretrieve.query.options import OPTIONS

__all__ = [
    "CaptionRequest",
    "Filter",
    "HealthResponse",
    "HitModel",
    "IndexInfo",
    "IndexesResponse",
    "ItemResponse",
    "SearchRequest",
    "SearchResponse",
]

_INDEX = Field(
    None,
    description="Name of the index to search (see GET /api/indexes); may be omitted when "
    "only one index is served.",
    max_length=64,
)


def _option(name: str, *, description: str | None = None, max_length: int | None = None) -> Any:
    """A request field for the search option `name`: its default, bounds and help text."""
    spec = OPTIONS[name]
    return Field(
        spec.default,
        ge=spec.ge,
        le=spec.le,
        max_length=max_length,
        description=description or spec.help,
    )


# A filter's literal: a number or a string (bounded), never SQL.
FilterScalar = StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=256)]
FilterValues = Annotated[list[FilterScalar], Field(min_length=1, max_length=64)]


class Filter(BaseModel):
    """One structured filter, `column op value`: the server checks the column, quotes the value."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(
        description="A metadata column (folder, year, width, height, bytes, mtime, path, ...).",
        max_length=64,
    )
    op: Literal["=", "!=", "<", "<=", ">", ">=", "in", "like"] = Field(
        description="The comparison; `in` takes a list of values, `like` a string pattern."
    )
    value: FilterScalar | FilterValues = Field(
        description="A number or string (a list of 1 to 64 of them for `in`); always a literal.",
    )


class SearchRequest(BaseModel):
    """A search: what to look for, what to return, and how to rank it."""

    model_config = ConfigDict(extra="forbid")

    index: str | None = _INDEX
    text: str | None = Field(
        None, description="Text query (also what BM25 reads when `hybrid` is on).", max_length=2000
    )
    id: str | None = Field(
        None,
        description="An indexed item's id: search with its stored vector (\"more like "
        'this"); the item itself comes first.',
        max_length=64,
    )
    audio_id: str | None = Field(
        None,
        description="An indexed audio item's id: its stored vector is one more query term.",
        max_length=64,
    )
    weights: list[float] | None = Field(
        None,
        description="Weights of the positive terms, in the order text, uploaded image, id, "
        "audio_id (those given); 1 each by default.",
        max_length=8,
    )
    negative: list[str] | None = Field(
        None,
        description="Texts to steer away from (each subtracted with weight 0.5).",
        max_length=8,
    )
    # The search options: default, bounds and description from `SearchOptions` (one
    # declaration; a test checks that these fields match it).
    modality: Literal["image", "text", "audio"] = _option("modality")
    k: int = _option("k", description="Hits per page (offset + k is bounded by the server).")
    offset: int = Field(0, ge=0, description="Hits to skip: the page starts after them.")
    hybrid: bool = _option("hybrid")
    fusion: Literal["rrf", "convex"] = _option("fusion")
    rrf_k: int = _option("rrf_k")
    alpha: float = _option("alpha")
    rerank: bool = _option("rerank")
    oversample: int = _option("oversample")
    mmr: float | None = _option("mmr")
    dedup: float | None = _option("dedup")
    where: str | None = _option("where", max_length=4000)
    filters: list[Filter] | None = Field(
        None,
        description="Structured filters, ANDed with each other and with `where` (the server "
        "builds and sandboxes the SQL).",
        max_length=32,
    )
    sort: Literal["score", "mtime"] = Field(
        "score",
        description="Order of the hits: by score, or by date (newest first) among the best "
        "matches the server considers (its maximum k).",
    )
    min_score: float | None = Field(
        None, description="Drop hits scoring below this (before paging)."
    )


class CaptionRequest(BaseModel):
    """Nearest captions of an image: an indexed item's id, or an uploaded image."""

    model_config = ConfigDict(extra="forbid")

    index: str | None = _INDEX
    id: str | None = Field(
        None, description="An indexed item's id (its stored vector is used).", max_length=64
    )
    k: int = Field(5, ge=1, description="Captions to return.")
    where: str | None = Field(
        None, description="SQL filter over the caption items' metadata.", max_length=4000
    )


class HitModel(BaseModel):
    """One result."""

    id: str = Field(description="The item's id: stable across generations for the same file.")
    rank: int = Field(description="Position in the whole ranking, from 1 (paging included).")
    score: float = Field(description="Ranking score (cosine, or the fused score).")
    components: dict[str, float] = Field(
        description="Component scores: dense (cosine) and, when hybrid, lexical (BM25)."
    )
    path: str = Field(description="The file's path relative to the indexed folder.")
    modality: str = Field(description="image, text or audio.")
    caption: str | None = Field(description="Caption text (text items; images: first sidecar).")
    metadata: dict[str, Any] = Field(description="The item's metadata row (JSON values).")
    thumb: str = Field(description="URL of a JPEG thumbnail (add ?index=, ?size=, ?token=).")
    file: str = Field(description="URL of the original file.")


class SearchResponse(BaseModel):
    """A page of results."""

    index: str = Field(description="The index searched.")
    generation: int = Field(description="The index generation the search ran on.")
    total: int = Field(description="Hits the search returned before paging (after min_score).")
    offset: int = Field(description="Hits skipped before this page.")
    k: int = Field(description="Hits asked for in this page.")
    hits: list[HitModel] = Field(description="This page's hits, best first (or newest first).")
    timings: dict[str, float] = Field(
        description="Milliseconds per stage (encode, filter, ann, lexical, fusion, rerank, "
        "metadata), `queue` (waiting for a worker), `search` (the library's total) and "
        "`total` (the server's handling)."
    )


class ItemResponse(BaseModel):
    """One indexed item."""

    id: str = Field(description="The item's id.")
    path: str = Field(description="The file's path relative to the indexed folder.")
    modality: str = Field(description="image, text or audio.")
    caption: str | None = Field(description="Caption text, if any.")
    metadata: dict[str, Any] = Field(description="The item's metadata row (JSON values).")
    thumb: str = Field(description="URL of a JPEG thumbnail.")
    file: str = Field(description="URL of the original file.")


class IndexInfo(BaseModel):
    """What one served index holds, and what its filter menus can offer."""

    name: str = Field(description="The name to pass as `index`.")
    model: dict[str, Any] = Field(description="The model that built the index (its spec).")
    rows: dict[str, int] = Field(description="Items per modality (image, text, audio).")
    generation: int = Field(description="The generation being served.")
    partition: dict[str, Any] = Field(
        description="The shards' partition key (none, folder or year) and its values."
    )
    facets: dict[str, Any] = Field(
        description="Filter menus: folder and year values; [min, max] of width, height, "
        "bytes and mtime (ISO 8601)."
    )


class IndexesResponse(BaseModel):
    """The served indexes."""

    indexes: list[IndexInfo] = Field(description="One entry per served index.")


class HealthResponse(BaseModel):
    """Liveness, and the generation each index is on."""

    status: str = Field(description="Always `ok` when the server answers.")
    indexes: dict[str, int] = Field(description="Served index name -> generation.")
