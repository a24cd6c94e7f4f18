"""Search options: one frozen dataclass, and the keyword form every search entry point takes.

Rules this module keeps:

- `SearchOptions` is the one declaration of what a search can be asked to do (filter,
  hybrid fusion, candidate pool, re-scoring, diversity) and of the defaults.
- `SearchOverrides` names the same fields for keyword use (`idx.search("x", k=5, hybrid=True)`);
  a test checks that both list the same names with the same types.
- `resolve_options` is the one place keywords become options: an unknown name or a bad
  value raises `InputError` naming it; nothing here knows of the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypedDict

from xretrieve._types import MODALITIES, Modality
from xretrieve.errors import InputError
from xretrieve.query import scoring

__all__ = [
    "FUSIONS",
    "MAX_K",
    "MAX_OVERSAMPLE",
    "OPTION_NAMES",
    "Fusion",
    "SearchOptions",
    "SearchOverrides",
    "resolve_options",
]

Fusion = Literal["rrf", "convex"]
FUSIONS: tuple[Fusion, ...] = ("rrf", "convex")


#: The most results one search returns: a bound, so that k cannot ask for a huge allocation.
MAX_K = 10_000
#: Candidates ranked before re-scoring are at most this many times k.
MAX_OVERSAMPLE = 64


@dataclass(frozen=True)
class SearchOptions:
    """How to rank: filter, hybrid fusion, candidate pool, re-scoring and diversity."""

    k: int = 10
    modality: Modality = "image"
    where: str | None = None
    hybrid: bool = False
    fusion: Fusion = (
        "convex"  # measured: see README "What the engine loses, and what hybrid search wins"
    )
    rrf_k: int = scoring.DEFAULT_RRF_K
    alpha: float = 0.5
    rerank: bool = False
    oversample: int = 4
    mmr: float | None = None
    dedup: float | None = None

    def validate(self) -> SearchOptions:
        """Return self, or raise `InputError` naming the bad option."""
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k <= 0:
            raise InputError(f"k must be a positive whole number, got {self.k!r}")
        if self.k > MAX_K:
            raise InputError(f"k must be at most {MAX_K:,}, got {self.k:,}")
        if not isinstance(self.oversample, int) or not 1 <= self.oversample <= MAX_OVERSAMPLE:
            raise InputError(
                f"oversample must be a whole number from 1 to {MAX_OVERSAMPLE}, got {self.oversample!r}"
            )
        if self.modality not in MODALITIES:
            raise InputError(
                f"unknown modality {self.modality!r}: use one of {', '.join(MODALITIES)}"
            )
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}: use rrf or convex")
        if not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise InputError(f"rrf_k must be a whole number >= 0, got {self.rrf_k!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.mmr is not None and not 0.0 <= self.mmr <= 1.0:
            raise InputError(f"mmr (lambda) must be in [0, 1], got {self.mmr}")
        if self.dedup is not None and not -1.0 <= self.dedup <= 1.0:
            raise InputError(f"dedup is a cosine threshold in [-1, 1], got {self.dedup}")
        return self

    @property
    def pool(self) -> int:
        """Candidates gathered before the final cut: k, or k * oversample when re-ranking."""
        plain = not (self.hybrid or self.rerank or self.mmr is not None or self.dedup is not None)
        return self.k if plain else self.k * self.oversample


class SearchOverrides(TypedDict, total=False):
    """The fields of `SearchOptions` as keyword arguments (for `**overrides` type checking)."""

    k: int
    modality: Modality
    where: str | None
    hybrid: bool
    fusion: Fusion
    rrf_k: int
    alpha: float
    rerank: bool
    oversample: int
    mmr: float | None
    dedup: float | None


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SearchOptions))


def resolve_options(
    options: SearchOptions | None,
    overrides: Mapping[str, Any],
    *,
    default: SearchOptions = SearchOptions(),  # frozen: one shared default is safe
) -> SearchOptions:
    """`options` (or `default`) with the keyword `overrides` applied, validated."""
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise InputError(
            f"unknown search option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"the options are {', '.join(OPTION_NAMES)}"
        )
    return replace(options if options is not None else default, **overrides).validate()
