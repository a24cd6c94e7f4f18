"""CLI: search an index (text, image or composed query; hybrid, filtered) and caption an image."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from xretrieve.cli._app import (
    DEFAULT_INDEX,
    DeviceOpt,
    IndexOpt,
    JsonOpt,
    ModelConfigOpt,
    ModelOpt,
    PrecisionOpt,
    PretrainedOpt,
    app,
    err,
    fail,
    hits_table,
    out,
    print_json,
    register,
)
from xretrieve.errors import InputError, ModelUnavailableError, XRetrieveError
from xretrieve.query.options import OPTIONS

if TYPE_CHECKING:
    from xretrieve.query import Index

_O = OPTIONS
WhereOpt = Annotated[str | None, typer.Option("--where", help=_O["where"].help)]
DedupOpt = Annotated[float | None, typer.Option("--dedup", help=_O["dedup"].help)]
ExplainOpt = Annotated[
    bool, typer.Option("--explain", help="Print per-stage timings (ms) to stderr.")
]


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from e


def _term(value: str) -> Any:
    # A --not value naming an existing file is an image; anything else is text.
    p = Path(value).expanduser()
    return p if p.is_file() else value


def _open_index(
    index: Path, *, model: str | None, pretrained: str | None, device: str, precision: str | None
) -> Index:
    from xretrieve.query import open_index

    try:
        return open_index(
            index, model=model, pretrained=pretrained, device=device, precision=precision
        )
    except ModelUnavailableError as e:
        raise ModelUnavailableError(f"{e} (--model names another copy)") from e


@app.command("search")
def search_cmd(
    query: Annotated[str | None, typer.Argument(help="Text query.")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", help="More text terms (repeatable).")
    ] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", help="Image terms (repeatable).")
    ] = None,
    audio: Annotated[
        list[Path] | None,
        typer.Option("--audio", help="Sound terms: WAV, FLAC, OGG, MP3 files (repeatable)."),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option(
            "--not", help="Term to steer away from: text, or an image file path (repeatable)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Comma-separated weights of the positive terms in order: QUERY, --text..., "
            "--image..., --audio... (default 1 each).",
        ),
    ] = None,
    not_weights: Annotated[
        str | None,
        typer.Option("--not-weights", help="Comma-separated weights of the --not terms (0.5)."),
    ] = None,
    index: IndexOpt = DEFAULT_INDEX,
    # The search options: defaults and help from `SearchOptions` (bounds checked by it).
    k: Annotated[int, typer.Option("-k", "--k", help=_O["k"].help)] = _O["k"].default,
    modality: Annotated[str, typer.Option(help=_O["modality"].help)] = _O["modality"].default,
    where: WhereOpt = _O["where"].default,
    hybrid: Annotated[bool, typer.Option("--hybrid", help=_O["hybrid"].help)] = _O[
        "hybrid"
    ].default,
    fusion: Annotated[str, typer.Option(help=_O["fusion"].help)] = _O["fusion"].default,
    rrf_k: Annotated[int, typer.Option("--rrf-k", help=_O["rrf_k"].help)] = _O["rrf_k"].default,
    alpha: Annotated[float, typer.Option(help=_O["alpha"].help)] = _O["alpha"].default,
    rerank: Annotated[bool, typer.Option("--rerank", help=_O["rerank"].help)] = _O[
        "rerank"
    ].default,
    oversample: Annotated[int, typer.Option(help=_O["oversample"].help)] = _O["oversample"].default,
    mmr: Annotated[float | None, typer.Option("--mmr", help=_O["mmr"].help)] = _O["mmr"].default,
    dedup: DedupOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
    paths: Annotated[
        bool, typer.Option("--paths", help="Print only absolute paths, one a line.")
    ] = False,
    explain: ExplainOpt = False,
) -> None:
    """Search with words, images or a weighted mix (QUERY, --text, --image, --not).

    The query vector is normalise(sum w_i * term_i - sum v_j * not_j) over unit embeddings.
    """
    from xretrieve.errors import EmptyQueryError
    from xretrieve.query import SearchOptions

    try:
        register(model_config)
        # Each term goes under the keyword of its kind, in the order --weights follows.
        texts = ([query] if query is not None else []) + list(text or [])
        images, sounds = list(image or []), list(audio or [])
        negatives = [_term(v) for v in negative or []]
        if not (texts or images or sounds):
            raise EmptyQueryError(
                "only --not terms: give something to search for as well"
                if negatives
                else "nothing to search for: give a text query, --text, --image or --audio"
            )
        options = SearchOptions(
            k=k,
            modality=modality,  # type: ignore[arg-type]
            where=where,
            hybrid=hybrid,
            fusion=fusion,  # type: ignore[arg-type]
            rrf_k=rrf_k,
            alpha=alpha,
            rerank=rerank,
            oversample=oversample,
            mmr=mmr,
            dedup=dedup,
        )  # checked as it is made, before the model loads: a bad option fails fast
        idx = _open_index(
            index, model=model, pretrained=pretrained, device=device, precision=precision
        )
        hits = idx.search(
            texts,
            image=images,
            audio=sounds,
            weights=_floats(weights, "--weights"),
            negative=negatives,
            negative_weights=_floats(not_weights, "--not-weights"),
            options=options,
        )
    except XRetrieveError as e:
        fail(e)
    title = " + ".join(str(t) for t in [*texts, *images, *sounds])
    _show(hits, as_json=as_json, paths=paths, title=f"{title} ({len(hits)} hits)", explain=explain)


def _timings_table(timings: dict[str, float]) -> Table:
    t = Table(title="timings", title_justify="left")
    t.add_column("stage")
    t.add_column("ms", justify="right")
    for stage, ms in timings.items():
        t.add_row(stage, f"{ms:.2f}")
    return t


def _show(hits: Any, *, as_json: bool, paths: bool, title: str, explain: bool = False) -> None:
    if paths:
        for h in hits:
            sys.stdout.write(f"{h.abs_path}\n")
    elif as_json:
        print_json(hits.to_dicts())
    else:
        out.print(hits_table(hits, title))
    if explain:
        err.print(_timings_table(hits.timings))


@app.command("caption")
def caption_cmd(
    image: Annotated[Path, typer.Argument(help="Image to describe.")],
    index: IndexOpt = DEFAULT_INDEX,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of captions.")] = 5,
    where: WhereOpt = None,
    dedup: DedupOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
    explain: ExplainOpt = False,
) -> None:
    """Find the indexed captions (sidecars and caption corpora) nearest to IMAGE."""
    try:
        register(model_config)
        idx = _open_index(
            index, model=model, pretrained=pretrained, device=device, precision=precision
        )
        hits = idx.caption(image, k=k, where=where, dedup=dedup)
    except XRetrieveError as e:
        fail(e)
    _show(hits, as_json=as_json, paths=False, title=f"captions for {image}", explain=explain)
