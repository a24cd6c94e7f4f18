"""CLI: train an audio tower into a model folder (evaluation is part of `xretrieve eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xretrieve.cli._app import (
    DeviceOpt,
    JsonOpt,
    LrOpt,
    MaxSecondsOpt,
    MaxStepsOpt,
    SeedOpt,
    app,
    fail,
    out,
    print_json,
    training_config,
)
from xretrieve.errors import XRetrieveError


@app.command("train-audio")
def train_audio_cmd(
    model_dir: Annotated[
        Path,
        typer.Argument(help="Model folder (from `xretrieve train`); the tower is added to it."),
    ],
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="World folder (uses train/) or a folder of sounds with captions and/or images "
            "of the same stem (clip.wav + clip.txt / clip.png)."
        ),
    ],
    max_seconds: MaxSecondsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Sounds per step.")] = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Train an audio tower into MODEL_DIR against its frozen image and text towers."""
    from xretrieve.encoders.audio_tower import AudioTrainConfig, train_audio

    try:
        cfg = training_config(
            AudioTrainConfig(),
            max_seconds=max_seconds,
            max_steps=max_steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
        )
        report = train_audio(model_dir, data_dir, config=cfg, device=device)
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    out.print(
        f"trained an audio tower on {report.n_sounds} sounds ({report.n_captions} captions, "
        f"{report.n_images} images): {report.steps} steps ({report.epochs:.1f} epochs) in "
        f"{report.seconds:.0f}s, final loss {report.final_loss:.3f} -> {model_dir}",
        highlight=False,
    )
