"""CLI: the world, training (CLIP, audio tower, CLAP adapter), evaluation and the model list."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from xretrieve.cli._app import (
    DeviceOpt,
    JsonOpt,
    LrOpt,
    MaxSecondsOpt,
    MaxStepsOpt,
    ModelConfigOpt,
    PrecisionOpt,
    PretrainedOpt,
    SeedOpt,
    TorchThreadsOpt,
    app,
    err,
    fail,
    out,
    print_json,
    register,
    training_config,
)
from xretrieve.errors import InputError, XRetrieveError


@app.command("make-world")
def make_world_cmd(
    out_dir: Annotated[Path, typer.Argument(help="New folder to write the world into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    test_fraction: Annotated[float, typer.Option(help="Share of images held out for test/.")] = 0.2,
    workers: Annotated[int, typer.Option(help="Processes used to draw.")] = os.cpu_count() or 1,
    audio: Annotated[
        bool, typer.Option("--audio", help="Also give every scene a sound (NAME.wav).")
    ] = False,
) -> None:
    """Generate a deterministic world of captioned shape scenes (train/ and test/ splits)."""
    from xretrieve.train.world import make_world
    from xretrieve.train.world_audio import add_audio_to_world

    try:
        info = make_world(
            out_dir,
            n=n,
            seed=seed,
            image_size=image_size,
            test_fraction=test_fraction,
            workers=workers,
        )
        sound = add_audio_to_world(out_dir, seed=seed, workers=workers) if audio else None
    except XRetrieveError as e:
        fail(e)
    out.print(
        f"wrote {info.n} scenes to {out_dir}: {info.n_train} train, {info.n_test} test "
        f"({image_size}x{image_size}, seed {seed})",
        highlight=False,
    )
    if sound is not None:
        out.print(
            f"wrote {sound.n_clips} sounds ({sound.clip_seconds:g} s, {sound.sample_rate} Hz)",
            highlight=False,
        )


@app.command("train")
def train_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Folder of images with .txt caption sidecars.")],
    out_dir: Annotated[
        Path, typer.Argument(help="Model folder to write (open_clip local-dir format).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Architecture config to train.")
    ] = None,
    model_config: ModelConfigOpt = None,
    max_seconds: MaxSecondsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Image-caption pairs per step.")] = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    torch_threads: TorchThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a small CLIP from scratch (contrastive loss) on captioned images.

    By default for the recipe's number of steps: every machine trains the same model, only
    slower or faster; --max-seconds trains by the clock instead.
    """
    from xretrieve.train.clip import TrainConfig, train
    from xretrieve.train.progress import ProgressLines

    try:
        register(model_config)
        cfg = training_config(
            TrainConfig(),
            max_seconds=max_seconds,
            max_steps=max_steps,
            model=model,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            threads=torch_threads,
        )
        # A line every 30 s where stderr is not a terminal (CI logs, pipes): the run is alive.
        report = train(data_dir, out_dir, config=cfg, progress=ProgressLines())
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    out.print(
        f"trained {report.config.model} on {report.n_images} images / {report.n_captions} captions: "
        f"{_pace(report)}, final loss {report.final_loss:.3f} -> {out_dir}",
        highlight=False,
    )


def _pace(report: Any) -> str:
    """Steps, epochs, time, loading, steps/s and threads of a training report, in words."""
    threads = f"{report.threads} torch thread{'s' if report.threads > 1 else ''}"
    return (
        f"{report.steps} steps ({report.epochs:.1f} epochs) in {_duration(report.seconds)} "
        f"({report.load_seconds:.0f}s loading, {report.steps_per_second:.2f} steps/s on {threads})"
    )


def _duration(seconds: float) -> str:
    """`95s` or `3 min 12 s`."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model folder (or architecture name).")],
    world: Annotated[
        Path | None, typer.Option("--world", help="World folder made by `make-world`.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Image-caption set: a folder of images with .txt captions, a CSV/TSV "
            "(image,caption rows; CLIP_benchmark's flickr30k_test_karpathy.txt), a COCO "
            "captions JSON or a Karpathy dataset_*.json, or a folder holding split files.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to evaluate: a world's (default test), or where the --data layout "
            "names splits (Karpathy: test)."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Folder the image names of a --data file are relative to (a COCO image "
            "folder such as val2014); default: the file's own folder.",
        ),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Run the captions through this built index (its shards, tuned nprobe, the "
            "query layer) against its image items: the model's exact R@K beside the index's, "
            "and the index's recall@10 against exact search. Labels come from --world or "
            "--data, else from the world folder the index was built in.",
        ),
    ] = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """R@1/5/10 text<->image with chance beside: on a world's held-out split, or on your data.

    --world: the world's split, plus audio<->image and text<->audio when the model has an
    audio tower and the world has sounds (`make-world --audio`). --data: the standard protocol
    (CLIP_benchmark): text->image counts a caption's own image in the top K, image->text an
    image with any of its captions in the top K. --index DIR: text->image through a built
    index, exact search beside (MODEL must be the model that built it).
    """
    from xretrieve.encoders import load_encoder

    try:
        if index is not None:
            _eval_index(
                index,
                model,
                world,
                data,
                split,
                images,
                pretrained,
                device,
                quiet,
                as_json,
                precision=precision,
            )
            return
        if (world is None) == (data is None):
            raise InputError("give one of --world DIR or --data PATH")
        if world is not None and images is not None:
            raise InputError("--images applies to --data only")
        enc = load_encoder(
            model, pretrained=pretrained, device=device, precision=precision or "fp32"
        )
        reports: list[Any] = []
        if data is not None:
            from xretrieve.train.datasets import load_eval_set
            from xretrieve.train.retrieval import evaluate_retrieval

            ds = load_eval_set(data, split=split, images=images)
            for skipped in ds.skipped:
                err.print(f"skipped {skipped}", highlight=False)
            reports.append(evaluate_retrieval(enc, ds, progress=False if quiet else None))
        elif world is not None:
            reports += _world_reports(enc, world, split or "test")
    except XRetrieveError as e:
        fail(e)
    if as_json:
        merged: dict[str, Any] = {}
        for r in reports:
            merged.update(r.to_dict())
        print_json(merged)
    else:
        if data is not None:
            x = reports[0].extra
            out.print(
                f"{x['data']} ({x['layout']}, images without captions: "
                f"{x['images_without_captions']}), model {reports[0].model}, {x['seconds']:.0f}s",
                highlight=False,
            )
        out.print("\n\n".join(r.format_table() for r in reports), highlight=False)


def _eval_index(
    index: Path,
    model: str,
    world: Path | None,
    data: Path | None,
    split: str | None,
    images: Path | None,
    pretrained: str | None,
    device: str,
    quiet: bool,
    as_json: bool,
    *,
    precision: str | None = None,
) -> None:
    """`eval --index`: R@K through a built index beside exact search, printed."""
    from xretrieve.query import open_index
    from xretrieve.train.index_eval import evaluate_index

    if world is not None and data is not None:
        raise InputError("give at most one of --world DIR or --data PATH with --index")
    ds = None
    if data is not None:
        from xretrieve.train.datasets import load_eval_set

        ds = load_eval_set(data, split=split, images=images)
    with open_index(
        index, model=model, pretrained=pretrained, device=device, precision=precision
    ) as idx:
        report = evaluate_index(
            idx, world=world, data=ds, split=split or "test", progress=False if quiet else None
        )
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(report.format_table(), highlight=False)


def _world_reports(enc: Any, world: Path, split: str) -> list[Any]:
    from xretrieve.train.evaluate import evaluate_world
    from xretrieve.train.evaluate_audio import evaluate_audio

    reports: list[Any] = [evaluate_world(enc, world, split=split)]
    if "audio" in enc.spec.towers and next((world / split).glob("*.wav"), None):
        reports.append(evaluate_audio(enc, world, split=split))
    return reports


@app.command("models")
def models_cmd(model_config: ModelConfigOpt = None) -> None:
    """List the model architectures that can be built (open_clip's and xretrieve's)."""
    from xretrieve.encoders import list_models

    try:
        register(model_config)
    except XRetrieveError as e:
        fail(e)
    for name in list_models():
        sys.stdout.write(name + "\n")


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
    torch_threads: TorchThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Train an audio tower into MODEL_DIR against its frozen image and text towers.

    By default for the recipe's number of steps (the same tower on every machine);
    --max-seconds trains by the clock instead.
    """
    from xretrieve.train.audio import AudioTrainConfig, train_audio
    from xretrieve.train.progress import ProgressLines

    try:
        cfg = training_config(
            AudioTrainConfig(),
            max_seconds=max_seconds,
            max_steps=max_steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            threads=torch_threads,
        )
        report = train_audio(
            model_dir, data_dir, config=cfg, device=device, progress=ProgressLines()
        )
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    out.print(
        f"trained an audio tower on {report.n_sounds} sounds ({report.n_captions} captions, "
        f"{report.n_images} images): {_pace(report)}, final loss {report.final_loss:.3f} "
        f"-> {model_dir}",
        highlight=False,
    )


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
    from xretrieve.train.clap_fit import add_clap

    try:
        if texts is None and world is None:
            raise InputError(
                "give the sentences to fit the map on: --texts FILE and/or --world DIR"
            )
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
