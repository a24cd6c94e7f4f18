"""Search options: one frozen dataclass, and the keyword form every search entry point takes.

Rules this module keeps:

- `SearchOptions` is the one declaration of what a search can be asked to do (filter,
  hybrid fusion, candidate pool, re-scoring, diversity): each field's default, bounds and help
  text live on the field (`OPTIONS` lists them as `OptionSpec`). The CLI flags and the HTTP
  `SearchRequest` take their defaults, bounds and help from there, and a test fails if any of
  the three differ.
- A `SearchOptions` is valid once made: `__post_init__` checks every field and raises
  `InputError` naming the bad one; no caller has a check to remember.
- `SearchOverrides` names the same fields for keyword use (`idx.search("x", k=5, hybrid=True)`);
  a test checks that both list the same names with the same types.
- `resolve_options` is the one place keywords become options; nothing here knows of the CLI
  or HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal, TypedDict

from xretrieve._types import MODALITIES, Modality
from xretrieve.errors import InputError
from xretrieve.query import scoring

__all__ = [
    "FUSIONS",
    "MAX_K",
    "MAX_OVERSAMPLE",
    "OPTIONS",
    "OPTION_NAMES",
    "Fusion",
    "OptionSpec",
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
class OptionSpec:
    """One search option as every front end shows it: name, kind, default, bounds, help."""

    name: str
    kind: type  # int, float, bool or str (the type of a value that is not None)
    default: Any
    help: str
    ge: float | None = None  # lowest value allowed
    le: float | None = None  # highest value allowed
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is a value (the option is off)


def _meta(
    help: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """A field's metadata: its help text and bounds (read into `OPTIONS`)."""
    return {"help": help, "ge": ge, "le": le, "choices": choices}


@dataclass(frozen=True)
class SearchOptions:
    """How to rank: filter, hybrid fusion, candidate pool, re-scoring and diversity.

    Made valid or not at all: a bad field raises `InputError` naming it.
    """

    k: int = field(default=10, metadata=_meta("Number of results.", ge=1, le=MAX_K))
    modality: Modality = field(
        default="image",
        metadata=_meta("What kind of items to return: image, text or audio.", choices=MODALITIES),
    )
    where: str | None = field(
        default=None,
        metadata=_meta(
            "SQL boolean expression over the metadata columns, applied before ranking, "
            "e.g. \"width >= 1024 AND path LIKE '%2024%'\" (checked by the library's sandbox)."
        ),
    )
    hybrid: bool = field(
        default=False,
        metadata=_meta("Fuse the dense ranking with BM25 over captions and path words."),
    )
    # Convex by default: docs/decisions/convex-fusion.md (scripts/eval_hybrid.py measures it).
    fusion: Fusion = field(
        default="convex",
        metadata=_meta(
            "How hybrid rankings fuse: convex (min-max scores) or reciprocal rank (rrf).",
            choices=FUSIONS,
        ),
    )
    rrf_k: int = field(
        default=scoring.DEFAULT_RRF_K,
        metadata=_meta("RRF constant: a rank counts 1/(rrf_k + rank).", ge=0),
    )
    alpha: float = field(
        default=0.5, metadata=_meta("Convex fusion: weight of the dense score.", ge=0.0, le=1.0)
    )
    rerank: bool = field(
        default=False,
        metadata=_meta("Re-score a larger candidate pool exactly with the stored vectors."),
    )
    oversample: int = field(
        default=4,
        metadata=_meta(
            "Candidate pool = k * oversample (for hybrid, rerank, MMR and dedup).",
            ge=1,
            le=MAX_OVERSAMPLE,
        ),
    )
    mmr: float | None = field(
        default=None,
        metadata=_meta(
            "Maximal marginal relevance lambda, 0..1 (1 = pure relevance; lower = more diverse).",
            ge=0.0,
            le=1.0,
        ),
    )
    dedup: float | None = field(
        default=None,
        metadata=_meta(
            "Drop hits whose cosine to a better hit is at least this (e.g. 0.97).", ge=-1.0, le=1.0
        ),
    )

    def __post_init__(self) -> None:
        for spec in OPTIONS.values():
            _check(spec, getattr(self, spec.name))

    def validate(self) -> SearchOptions:
        """Return self: a `SearchOptions` is checked when it is made."""
        return self

    @property
    def pool(self) -> int:
        """Candidates gathered before the final cut: k, or k * oversample when re-ranking."""
        plain = not (self.hybrid or self.rerank or self.mmr is not None or self.dedup is not None)
        return self.k if plain else self.k * self.oversample


def _check(spec: OptionSpec, value: Any) -> None:
    """Raise `InputError` unless `value` is a valid `spec` (one line, naming the option)."""
    name = spec.name
    if value is None and spec.optional:
        return
    if spec.choices is not None:
        if value not in spec.choices:
            raise InputError(f"unknown {name} {value!r}: use one of {', '.join(spec.choices)}")
        return
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {value!r}")
        return
    if spec.kind is str:
        if not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {type(value).__name__}")
        return
    whole = spec.kind is int
    number = isinstance(value, int) if whole else isinstance(value, int | float)
    if not number or isinstance(value, bool) or (not whole and math.isnan(value)):
        what = "a whole number" if whole else "a number"
        raise InputError(f"{name} must be {what}, got {value!r}")
    if spec.ge is not None and value < spec.ge:
        if whole and spec.ge == 1:
            raise InputError(f"{name} must be a positive whole number, got {value!r}")
        raise InputError(f"{name} must be at least {_num(spec.ge)}, got {value!r}")
    if spec.le is not None and value > spec.le:
        raise InputError(f"{name} must be at most {_num(spec.le)}, got {_num(value)}")


def _num(x: float) -> str:
    big = isinstance(x, int) or (float(x).is_integer() and abs(x) >= 1000)
    return f"{x:,}" if big else f"{x:g}"


def _spec(f: Any) -> OptionSpec:
    hint = f.type if isinstance(f.type, str) else str(f.type)
    optional = "None" in hint
    base = hint.replace("| None", "").strip()
    kind = {"int": int, "float": float, "bool": bool}.get(base, str)
    meta = f.metadata
    assert f.default is not MISSING, f.name
    return OptionSpec(
        f.name, kind, f.default, meta["help"], meta["ge"], meta["le"], meta["choices"], optional
    )


#: Every search option by name, in declaration order: what the CLI and HTTP fronts derive from.
OPTIONS: dict[str, OptionSpec] = {f.name: _spec(f) for f in fields(SearchOptions)}


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


OPTION_NAMES: tuple[str, ...] = tuple(OPTIONS)


def resolve_options(
    options: SearchOptions | None,
    overrides: Mapping[str, Any],
    *,
    default: SearchOptions | None = None,
) -> SearchOptions:
    """`options` (or `default`, or the defaults) with the keyword `overrides` applied."""
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise InputError(
            f"unknown search option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"the options are {', '.join(OPTION_NAMES)}"
        )
    base = options if options is not None else default if default is not None else _DEFAULT
    return replace(base, **overrides) if overrides else base


_DEFAULT = SearchOptions()
