"""CLI: map a local pretrained CLAP audio tower into a model folder's space."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xretrieve.cli._app import DeviceOpt, JsonOpt, app, fail, out, print_json
from xretrieve.errors import XRetrieveError


@app.command("add-clap")
def add_clap_cmd(
    model_dir: Annotated[
        Path,
        typer.Argument(help="Model folder (from `xretrieve train`); the adapter is added to it."),
    ],
    clap_dir: Annotated[
        Path,
        typer.Argument(
            help="Local Hugging Face CLAP folder (config.json, weights, tokenizer and "
            "preprocessor_config.json), e.g. a saved laion/clap-htsat-unfused."
        ),
    ],
    texts: Annotated[
        Path | None,
        typer.Option("--texts", help="Sentences to fit the map on, one per line."),
    ] = None,
    world: Annotated[
        Path | None,
        typer.Option(
            "--world",
            help="Also fit on the caption sidecars of this folder (a world folder: its train/).",
        ),
    ] = None,
    ridge: Annotated[
        float | None,
        typer.Option(
            help="Ridge strength, relative to the mean eigenvalue of the centred CLAP text "
            "vectors (default: the value of 1e-4..10 with the least leave-one-out error)."
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Add a pretrained CLAP audio tower to MODEL_DIR, mapped linearly via shared sentences."""
    from xretrieve.encoders.clap import add_clap

    try:
        report = add_clap(
            model_dir,
            clap_dir,
            texts=texts,
            world=world,
            ridge=ridge,
            device=device,
        )
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    fit = report.fit
    out.print(
        f"mapped CLAP ({report.clap_dim}-d) into {model_dir} ({report.dim}-d) on "
        f"{fit.n_fit} sentences (ridge {fit.ridge:g}): held-out ({fit.n_heldout}) R² {fit.r2_heldout:.3f}, cosine "
        f"{fit.cosine_heldout:.3f} (mean vector alone {fit.cosine_baseline:.3f}), R@1 "
        f"{fit.recall_at_1:.2f} in {report.seconds:.0f}s",
        highlight=False,
    )
