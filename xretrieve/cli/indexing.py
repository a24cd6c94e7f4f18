"""CLI: build an index from a folder, and describe one."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
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
    make_encoder,
    out,
    print_json,
    register,
)
from xretrieve.errors import XRetrieveError


@app.command("index")
def index_cmd(
    folder: Annotated[Path, typer.Argument(help="Media folder to index (walked recursively).")],
    index: IndexOpt = DEFAULT_INDEX,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    model_config: ModelConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=65_536, help="Images per encoder batch.")
    ] = 32,
    workers: Annotated[
        int | None, typer.Option(min=1, max=256, help="Decode threads (default: cores).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild: re-read and re-encode everything.")
    ] = False,
    index_type: Annotated[
        str | None,
        typer.Option(
            help="FAISS index type override (flat, hnsw, ivf-sq8, ivf-pq, or a FAISS factory string)."
        ),
    ] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Maximum rows per shard.")] = 1_000_000,
    shard_by: Annotated[
        str | None,
        typer.Option(
            help="Partition shards by a metadata column: none, folder (top-level folder) "
            "or year (of mtime); searches filtering on it skip whole shards. "
            "Default: the index's current key (none for a new index)."
        ),
    ] = None,
    commit_every: Annotated[
        int,
        typer.Option(min=1, help="Items between two commits (a killed run resumes from the last)."),
    ] = 4096,
    torch_threads: Annotated[
        int | None,
        typer.Option(
            "--torch-threads",
            "--threads",
            min=1,
            max=1024,
            help="Encoder threads, torch or OpenVINO (default: torch's choice; OpenVINO: "
            "every core).",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help="Read, decode and embed the images on a Ray cluster: auto (RAY_ADDRESS, a "
            "running local cluster, or a new one) or host:port / ray://host:port. Media "
            "paths must be readable from every worker. Needs the ray extra.",
        ),
    ] = None,
    ray_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Encoder actors on the Ray cluster (default: one per GPU, or CPUs / --threads).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index the images and caption sidecars (.txt, one caption a line) of FOLDER."""
    from xretrieve.indexer import IndexOptions, index_folder

    try:
        register(model_config)
        if (
            (index / "manifest.json").is_file()
            and not full
            and (model is None or precision is None)
        ):
            from xretrieve.errors import IndexCorruptError
            from xretrieve.store import read_manifest

            try:
                built = read_manifest(index).model
            except IndexCorruptError:
                if model is None:
                    raise
                built = {}  # damaged: the writer replaces it (the model was named)
            if model is None:
                model, pretrained = built["name"], built.get("pretrained")
            precision = precision or str(built.get("precision") or "fp32")
        # Lazy: a run that finds nothing to encode never loads the model (its spec is remembered).
        enc = make_encoder(
            model, pretrained, device, precision=precision, threads=torch_threads, lazy=True
        )
        opts = IndexOptions(
            batch_size=batch_size,
            workers=workers,
            max_rows_per_shard=max_rows,
            index_type=index_type,
            full=full,
            progress=not quiet and not as_json,
            shard_by=shard_by,
            commit_every=commit_every,
            torch_threads=torch_threads,
            ray=ray,
            ray_concurrency=ray_concurrency,
        )
        report = index_folder(folder, index, encoder=enc, options=opts)
    except XRetrieveError as e:
        fail(e)
    if as_json:
        print_json(report.to_dict())
        return
    t = Table(
        title=f"{folder} -> {index} (generation {report.generation})",
        title_justify="left",
        show_header=False,
    )
    t.add_column("what")
    t.add_column("count", justify="right")
    d = report.to_dict()
    for key in (
        "indexed",
        "updated",
        "unchanged",
        "removed",
        "failed",
        "encoded",
        "reused",
        "images",
        "texts",
    ):
        t.add_row(key, str(d[key]))
    t.add_row("duration (s)", f"{report.seconds:.1f}")
    t.add_row("items/s", f"{report.items_per_s:.1f}")
    out.print(t)
    for p in report.problems:
        err.print(
            f"[yellow]skipped[/] {escape(str(p.path))}: {escape(p.reason)}",
            highlight=False,
            markup=True,
        )


def _precisions(model: dict[str, Any]) -> str:
    """The vectors' precision, and the converted towers ready for these weights."""
    from xretrieve.encoders.sources import converted_dir

    built = model.get("precision") or "fp32"
    ready = ["fp32"]
    meta = converted_dir(str(model["name"]), str(model["fingerprint"])) / "converted.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        ready += ["bf16", "int8"] if json.loads(meta.read_text()).get("int8") else ["bf16"]
    return (
        f"vectors made in {built}; queries run in {built} by default, or in any precision "
        f"of the same weights (ready without converting: {', '.join(ready)})"
    )


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
        fail(e)
    if as_json:
        print_json({"path": str(index), **json.loads(m.to_json())})
        return
    out.print(
        f"[bold]{escape(str(index))}[/]  generation {m.generation}, format v{m.format_version}",
        highlight=False,
        markup=True,
    )
    out.print(f"root     {m.root}", highlight=False)
    out.print(
        f"model    {m.model['name']}  pretrained={m.model.get('pretrained')}  fingerprint={m.model['fingerprint']}",
        highlight=False,
    )
    out.print(f"precision {_precisions(m.model)}", highlight=False)
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
            f"{s.live_rows} (+{s.deleted_rows} deleted)" if s.deleted_rows else str(s.rows),
            s.index_type,
            params or "-",
            f"{s.ann['recall']:.3f}" if "recall" in s.ann else "-",
            str(sum(f.bytes for f in s.files())),
        )
    out.print(t)
    if verify:
        out.print("checksums: all shard files match the manifest")
