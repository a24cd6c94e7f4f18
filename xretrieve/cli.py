"""The `xretrieve` command line: the only place errors become messages and exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from xretrieve.errors import XRetrieveError

app = typer.Typer(
    name="xretrieve",
    help="Cross-modal retrieval over a media folder: index it, then search it in words or pictures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_INDEX = Path("indexes/default")

IndexOpt = Annotated[Path, typer.Option("--index", "-i", help="Index folder.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu or cuda.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: an open_clip architecture (ViT-B-32) or a model folder (from `xretrieve train`). "
        "Search defaults to the model recorded in the index.",
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help="Weights for an architecture: an open_clip tag (laion2b_s34b_b79k, needs network once) "
        "or a local checkpoint file; 'none' for random init.",
    ),
]
ModelConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--model-config", help="Register an open_clip model config JSON (repeatable)."),
]


def _quiet_libraries() -> None:
    # open_clip and huggingface_hub log warnings for expected situations (random init, offline).
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(e: XRetrieveError) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
    raise typer.Exit(code=e.exit_code)


def _register(configs: list[Path] | None) -> None:
    from xretrieve.encoders import register_model_config

    for c in configs or []:
        register_model_config(c)


def _encoder(model: str | None, pretrained: str | None, device: str) -> Any:
    from xretrieve.encoders import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_encoder

    if model is None:
        model, pretrained = DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    return load_encoder(model, pretrained=pretrained, device=device)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


def _hits_table(hits: Any, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("modality")
    t.add_column("path", overflow="fold")
    t.add_column("caption", overflow="fold")
    for h in hits:
        t.add_row(str(h.rank), f"{h.score:.4f}", h.modality, h.path, h.caption or "")
    return t


@app.command("make-world")
def make_world_cmd(
    out_dir: Annotated[Path, typer.Argument(help="New folder to write the world into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    test_fraction: Annotated[float, typer.Option(help="Share of images held out for test/.")] = 0.2,
    workers: Annotated[int, typer.Option(help="Processes used to draw.")] = os.cpu_count() or 1,
) -> None:
    """Generate a deterministic world of captioned shape scenes (train/ and test/ splits)."""
    from xretrieve.world import make_world

    try:
        info = make_world(
            out_dir,
            n=n,
            seed=seed,
            image_size=image_size,
            test_fraction=test_fraction,
            workers=workers,
        )
    except XRetrieveError as e:
        _fail(e)
        return
    out.print(
        f"wrote {info.n} scenes to {out_dir}: {info.n_train} train, {info.n_test} test "
        f"({image_size}x{image_size}, seed {seed})",
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
    max_seconds: Annotated[
        float | None, typer.Option(help="Wall-clock budget; the LR schedule spans it.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Image-caption pairs per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a small CLIP from scratch (contrastive loss) on captioned images."""
    import dataclasses

    from xretrieve.train import TrainConfig, train

    try:
        _register(model_config)
        overrides: dict[str, Any] = {"seed": seed}
        for key, value in (
            ("model", model),
            ("batch_size", batch_size),
            ("lr", lr),
            ("max_steps", max_steps),
        ):
            if value is not None:
                overrides[key] = value
        if max_seconds is not None or max_steps is not None:
            overrides["max_seconds"] = max_seconds
        cfg = dataclasses.replace(TrainConfig(), **overrides)
        report = train(data_dir, out_dir, config=cfg)
    except XRetrieveError as e:
        _fail(e)
        return
    if as_json:
        _print_json(report.to_dict())
        return
    out.print(
        f"trained {report.config.model} on {report.n_images} images / {report.n_captions} captions: "
        f"{report.steps} steps ({report.epochs:.1f} epochs) in {report.seconds:.0f}s, "
        f"final loss {report.final_loss:.3f} -> {out_dir}",
        highlight=False,
    )


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model folder (or architecture name).")],
    world: Annotated[Path, typer.Option("--world", help="World folder made by `make-world`.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Report text->image and image->text R@1/5/10 on a world's held-out split, chance beside."""
    from xretrieve.encoders import load_encoder
    from xretrieve.evaluate import evaluate_world

    try:
        enc = load_encoder(model, pretrained=pretrained, device=device)
        report = evaluate_world(enc, world, split=split)
    except XRetrieveError as e:
        _fail(e)
        return
    if as_json:
        _print_json(report.to_dict())
    else:
        out.print(report.format_table(), highlight=False)


@app.command("index")
def index_cmd(
    folder: Annotated[Path, typer.Argument(help="Media folder to index (walked recursively).")],
    index: IndexOpt = DEFAULT_INDEX,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per encoder batch.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Decode threads (default: cores).")] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild: re-read and re-encode everything.")
    ] = False,
    index_type: Annotated[
        str | None,
        typer.Option(
            help="FAISS index type override (flat, hnsw, ivf-sq8, ivf-pq, or a FAISS factory string)."
        ),
    ] = None,
    max_rows: Annotated[int, typer.Option(help="Maximum rows per shard.")] = 1_000_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index the images and caption sidecars (.txt, one caption a line) of FOLDER."""
    from xretrieve.indexer import IndexOptions, index_folder

    try:
        _register(model_config)
        if model is None and not full and (index / "manifest.json").is_file():
            from xretrieve.store import read_manifest

            built = read_manifest(index).model
            model, pretrained = built["name"], built.get("pretrained")
        enc = _encoder(model, pretrained, device)
        opts = IndexOptions(
            batch_size=batch_size,
            workers=workers,
            max_rows_per_shard=max_rows,
            index_type=index_type,
            full=full,
            progress=not quiet,
        )
        report = index_folder(folder, index, encoder=enc, options=opts)
    except XRetrieveError as e:
        _fail(e)
        return
    if as_json:
        _print_json(report.to_dict())
        return
    t = Table(
        title=f"{folder} -> {index} (generation {report.generation})",
        title_justify="left",
        show_header=False,
    )
    t.add_column("what")
    t.add_column("count", justify="right")
    d = report.to_dict()
    for key in ("images", "texts", "indexed", "reused", "unchanged", "removed", "failed"):
        t.add_row(key, str(d[key]))
    t.add_row("seconds", f"{report.seconds:.1f}")
    t.add_row("items/s", f"{report.items_per_s:.1f}")
    out.print(t)
    for p in report.problems:
        err.print(f"[yellow]skipped[/] {p.path}: {p.reason}", highlight=False)


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
        _register(model_config)
        if query is None and image is None:
            raise EmptyQueryError("nothing to search for: give a text query or --image PATH")
        idx = open_index(index, model=model, pretrained=pretrained, device=device)
        hits = idx.search(query, image=image, k=k, modality=modality)  # type: ignore[arg-type]
    except XRetrieveError as e:
        _fail(e)
        return
    _show(hits, as_json=as_json, paths=paths, title=f"{query or image} ({len(hits)} hits)")


def _show(hits: Any, *, as_json: bool, paths: bool, title: str) -> None:
    if paths:
        for h in hits:
            sys.stdout.write(f"{h.abs_path}\n")
    elif as_json:
        _print_json(hits.to_dicts())
    else:
        out.print(_hits_table(hits, title))


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
        _register(model_config)
        idx = open_index(index, model=model, pretrained=pretrained, device=device)
        hits = idx.caption(image, k=k)
    except XRetrieveError as e:
        _fail(e)
        return
    _show(hits, as_json=as_json, paths=False, title=f"captions for {image}")


@app.command("info")
def info_cmd(
    index: Annotated[Path, typer.Argument(help="Index folder.")] = DEFAULT_INDEX,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every shard file's checksum.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe an index: model, generation, rows, shards."""
    from xretrieve import store

    try:
        m = store.read_manifest(index)
        if verify:
            for s in m.shards:
                store.load_shard(index, s, verify=True)
    except XRetrieveError as e:
        _fail(e)
        return
    if as_json:
        _print_json({"path": str(index), **json.loads(m.to_json())})
        return
    out.print(
        f"[bold]{index}[/]  generation {m.generation}, format v{m.format_version}", highlight=False
    )
    out.print(f"root     {m.root}", highlight=False)
    out.print(
        f"model    {m.model['name']}  pretrained={m.model.get('pretrained')}  fingerprint={m.model['fingerprint']}",
        highlight=False,
    )
    out.print(
        f"vectors  {m.dim} dims, {m.metric}, {m.rows} rows {m.rows_by_modality()}", highlight=False
    )
    t = Table(title="shards", title_justify="left")
    for col in ("name", "modality", "rows", "index type", "params", "recall@10", "bytes"):
        t.add_column(col)
    for s in m.shards:
        params = " ".join(
            f"{k}={s.ann[k]}" for k in ("nprobe", "ef_search", "oversample") if s.ann.get(k, 0) > 1
        )
        t.add_row(
            s.name,
            s.modality,
            str(s.rows),
            s.index_type,
            params or "-",
            f"{s.ann['recall']:.3f}" if "recall" in s.ann else "-",
            str(s.index_file.bytes + s.meta_file.bytes),
        )
    out.print(t)
    if verify:
        out.print("checksums: all shard files match the manifest")


@app.command("models")
def models_cmd(model_config: ModelConfigOpt = None) -> None:
    """List the model architectures that can be built (open_clip's and xretrieve's)."""
    from xretrieve.encoders import list_models

    try:
        _register(model_config)
    except XRetrieveError as e:
        _fail(e)
    for name in list_models():
        sys.stdout.write(name + "\n")


def main() -> None:
    """Console-script entry point."""
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
