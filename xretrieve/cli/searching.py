"""CLI: search an index (text or image query) and caption an image."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from xretrieve.cli._app import (
    DEFAULT_INDEX,
    DeviceOpt,
    IndexOpt,
    JsonOpt,
    ModelConfigOpt,
    ModelOpt,
    PretrainedOpt,
    app,
    fail,
    hits_table,
    out,
    print_json,
    register,
)
from xretrieve.errors import XRetrieveError


@app.command("search")
def search_cmd(
    query: Annotated[str | None, typer.Argument(help="Text query.")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Image query (image -> image).")
    ] = None,
    index: IndexOpt = DEFAULT_INDEX,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    modality: Annotated[str, typer.Option(help="What to return: image or text.")] = "image",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    paths: Annotated[
        bool, typer.Option("--paths", help="Print only absolute paths, one a line.")
    ] = False,
) -> None:
    """Search the index with words (text -> image) or with --image (image -> image)."""
    from xretrieve.errors import EmptyQueryError
    from xretrieve.query import open_index

    try:
        register(model_config)
        if query is None and image is None:
            raise EmptyQueryError("nothing to search for: give a text query or --image PATH")
        idx = open_index(index, model=model, pretrained=pretrained, device=device)
        hits = idx.search(query, image=image, k=k, modality=modality)  # type: ignore[arg-type]
    except XRetrieveError as e:
        fail(e)
    _show(hits, as_json=as_json, paths=paths, title=f"{query or image} ({len(hits)} hits)")


def _show(hits: Any, *, as_json: bool, paths: bool, title: str) -> None:
    if paths:
        for h in hits:
            sys.stdout.write(f"{h.abs_path}\n")
    elif as_json:
        print_json(hits.to_dicts())
    else:
        out.print(hits_table(hits, title))


@app.command("caption")
def caption_cmd(
    image: Annotated[Path, typer.Argument(help="Image to describe.")],
    index: IndexOpt = DEFAULT_INDEX,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of captions.")] = 5,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Find the indexed captions nearest to IMAGE (image -> text)."""
    from xretrieve.query import open_index

    try:
        register(model_config)
        idx = open_index(index, model=model, pretrained=pretrained, device=device)
        hits = idx.caption(image, k=k)
    except XRetrieveError as e:
        fail(e)
    _show(hits, as_json=as_json, paths=False, title=f"captions for {image}")
