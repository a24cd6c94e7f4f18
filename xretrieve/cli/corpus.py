"""CLI: add a caption corpus (text, JSON Lines or Parquet) to an index."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    fail,
    make_encoder,
    out,
    print_json,
    register,
)
from xretrieve.errors import XRetrieveError


@app.command("add-captions")
def add_captions_cmd(
    corpus: Annotated[
        Path,
        typer.Argument(
            help="Caption file: .txt (one caption a line), .jsonl or .parquet (see --column)."
        ),
    ],
    index: IndexOpt = DEFAULT_INDEX,
    column: Annotated[
        str, typer.Option(help="JSON field / Parquet column holding the caption.")
    ] = "caption",
    batch_size: Annotated[int, typer.Option(help="Captions encoded per batch.")] = 4096,
    max_rows: Annotated[int, typer.Option(help="Maximum rows per shard.")] = 1_000_000,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Encoder threads, torch or OpenVINO (small models on busy machines: 1 is "
            "often fastest)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index the captions of CORPUS as text items, for `xretrieve caption` lookups.

    Blank lines are skipped; adding the same file again replaces its earlier captions.
    """
    from tqdm import tqdm

    from xretrieve.indexer.corpus import add_captions
    from xretrieve.store import read_manifest

    try:
        register(model_config)
        if threads is not None and (precision or "fp32") not in ("bf16", "int8"):
            import torch

            torch.set_num_threads(max(1, threads))
        if model is None or (precision is None and (index / "manifest.json").is_file()):
            built = read_manifest(index).model
            if model is None:
                model, pretrained = built["name"], built.get("pretrained")
            precision = precision or str(built.get("precision") or "fp32")
        enc = make_encoder(model, pretrained, device, precision=precision, threads=threads)
        with tqdm(
            unit="captions", disable=quiet or as_json or not sys.stderr.isatty(), leave=False
        ) as bar:
            report = add_captions(
                index,
                corpus,
                encoder=enc,
                column=column,
                batch_size=batch_size,
                max_rows_per_shard=max_rows,
                progress=bar.update,
            )
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    t = Table(title=f"{corpus} -> {index} (generation {report.generation})", show_header=False)
    for key, value in report.to_dict().items():
        t.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    out.print(t)
