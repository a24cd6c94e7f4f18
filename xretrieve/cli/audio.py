"""CLI: sound for the world, training the audio tower into a model folder, audio evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from xretrieve.cli._app import DeviceOpt, JsonOpt, app, fail, out, print_json
from xretrieve.errors import XRetrieveError


@app.command("make-world-audio")
def make_world_audio_cmd(
    world: Annotated[Path, typer.Argument(help="World folder made by `make-world`.")],
    sample_rate: Annotated[
        int, typer.Option(help="Sample rate of the written WAV files.")
    ] = 16_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes used to synthesise.")] = os.cpu_count()
    or 1,
) -> None:
    """Give every image of a world a sound (NAME.wav beside NAME.png): its concepts as notes."""
    from xretrieve.world_audio import add_audio_to_world

    try:
        info = add_audio_to_world(world, sample_rate=sample_rate, seed=seed, workers=workers)
    except XRetrieveError as e:
        fail(e)
    out.print(
        f"wrote {info.n_clips} sounds into {world} ({info.clip_seconds:g} s, "
        f"{info.sample_rate} Hz, seed {seed})",
        highlight=False,
    )


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
    max_seconds: Annotated[
        float | None, typer.Option(help="Wall-clock budget; the LR schedule spans it.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sounds per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Train an audio tower into MODEL_DIR against its frozen image and text towers."""
    import dataclasses

    from xretrieve.audio_model import AudioTrainConfig, train_audio

    try:
        overrides: dict[str, object] = {"seed": seed}
        for key, value in (("batch_size", batch_size), ("lr", lr), ("max_steps", max_steps)):
            if value is not None:
                overrides[key] = value
        if max_seconds is not None or max_steps is not None:
            overrides["max_seconds"] = max_seconds
        cfg = dataclasses.replace(AudioTrainConfig(), **overrides)  # type: ignore[arg-type]
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


@app.command("eval-audio")
def eval_audio_cmd(
    model: Annotated[str, typer.Argument(help="Model folder with an audio tower.")],
    world: Annotated[Path, typer.Option("--world", help="World folder with sound.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Report audio<->image and text<->audio R@1/5/10 on a world's held-out split, chance beside."""
    from xretrieve.encoders import load_encoder
    from xretrieve.evaluate_audio import evaluate_audio

    try:
        enc = load_encoder(model, pretrained=None, device=device)
        report = evaluate_audio(enc, world, split=split)
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(report.format_table(), highlight=False)
