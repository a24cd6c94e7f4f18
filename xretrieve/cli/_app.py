"""Shared pieces of the CLI: the typer app, consoles, common options, error mapping."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xretrieve.errors import (
    FolderError,
    IndexCorruptError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
    MediaError,
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    XRetrieveError,
)

app = typer.Typer(
    name="xretrieve",
    help="Cross-modal retrieval over a media folder: index it, then search it in words or pictures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Markup and emoji codes are off: paths and captions come from the index or the user, and
# `a [/oops] red circle` or `:smile:` must print as written. Styled text escapes its data.
out = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
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
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32 (torch), bf16 (OpenVINO on the CPU, autocast on a GPU), int8 (OpenVINO, "
        "CPU) or fp16 (GPU). Default: the index's own (fp32 for a new index).",
    ),
]
ModelConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--model-config", help="Register an open_clip model config JSON (repeatable)."),
]


MaxSecondsOpt = Annotated[
    float | None,
    typer.Option(
        help="Wall-clock budget instead of the step budget (alone, the model then depends on "
        "the machine's speed and load); the LR schedule spans it."
    ),
]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option(
        help="Step budget (default: the recipe's; same seed and steps, same model on any "
        "load); the LR schedule spans it."
    ),
]
TorchThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="Torch threads (default: every core this process may use; waiting threads "
        "sleep, so a busy machine costs little; the count changes the weights' last bits)."
    ),
]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]


#: Exit codes by error family, most specific first: the CLI's half of the one error tree.
EXIT_CODES: tuple[tuple[type[XRetrieveError], int], ...] = (
    (InputError, 2),
    (MediaError, 2),
    (FolderError, 3),
    (ModelError, 4),
    (IndexStoreError, 5),
    (XRetrieveError, 1),
)


def exit_code(e: XRetrieveError) -> int:
    """The exit code the CLI uses for an error of this family."""
    return next(code for cls, code in EXIT_CODES if isinstance(e, cls))


#: What to type next, by error type and code (None: any code): library messages name no
#: flags, so the command line adds its own. The first row that matches wins; an error raised
#: `from` another that matches no row is read through its cause (a wrapper keeps the hint).
HINTS: tuple[tuple[type[XRetrieveError], str | None, str], ...] = (
    (
        ModelUnavailableError,
        ModelUnavailableError.OFFLINE,
        "--pretrained /path/to/checkpoint or --model /path/to/model-folder",
    ),
    (
        ModelMismatchError,
        None,
        "--model names another copy of that model; `index --full` rebuilds with this one",
    ),
    (IndexNotFoundError, None, "`xretrieve index FOLDER --index DIR` builds one"),
    (IndexCorruptError, None, "`xretrieve index FOLDER --index DIR --full` rebuilds it"),
    (
        InputError,
        InputError.UNKNOWN_MODEL,
        "see `xretrieve models`; --model-config FILE registers a config",
    ),
    (InputError, InputError.NO_CUDA, "--device cpu"),
    (InputError, InputError.GPU_ONLY_PRECISION, "--precision bf16 or int8 on the CPU"),
    (InputError, InputError.CPU_ONLY_PRECISION, "--device cpu"),
    (
        InputError,
        InputError.PRECISION_MISMATCH,
        "--precision names the index's own; --full rebuilds it",
    ),
    (InputError, InputError.CAPTION_COLUMN, "--column names it"),
    (
        FolderError,
        FolderError.NO_SOUNDS,
        "`xretrieve make-world --audio` makes a world with sounds",
    ),
    (InputError, InputError.SPLIT_UNCHOSEN, "--split NAME chooses one"),
    (FolderError, FolderError.SPLIT_UNCHOSEN, "--split NAME chooses one"),
)


def hint(e: XRetrieveError) -> str | None:
    """The CLI's hint for this error (or for the error it was raised from), if it has one."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while isinstance(cause, XRetrieveError) and id(cause) not in seen:
        seen.add(id(cause))
        found = next(
            (
                h
                for cls, code, h in HINTS
                if isinstance(cause, cls) and (code is None or cause.code == code)
            ),
            None,
        )
        if found is not None:
            return found
        cause = cause.__cause__
    return None


def fail(e: XRetrieveError) -> NoReturn:
    """Print the error (and the CLI's hint) on one line, exit with its family's code."""
    extra = hint(e)
    line = escape(str(e).replace("\n", " ")) + (
        f" [dim](hint: {escape(extra)})[/]" if extra else ""
    )
    err.print(f"[bold red]error:[/] {line}", highlight=False, markup=True)
    raise typer.Exit(code=exit_code(e))


def register(configs: list[Path] | None) -> None:
    from xretrieve.encoders import register_model_config

    for c in configs or []:
        register_model_config(c)


def make_encoder(
    model: str | None,
    pretrained: str | None,
    device: str,
    *,
    precision: str | None = None,
    threads: int | None = None,
    lazy: bool = False,
) -> Any:
    from xretrieve.encoders.factory import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_encoder

    if model is None:
        model, pretrained = DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    return load_encoder(
        model,
        pretrained=pretrained,
        device=device,
        precision=precision or "fp32",
        threads=threads,
        lazy=lazy,
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


def hits_table(hits: Any, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("modality")
    t.add_column("path", overflow="fold")
    t.add_column("caption", overflow="fold")
    for h in hits:
        t.add_row(str(h.rank), f"{h.score:.4f}", h.modality, h.path, h.caption or "")
    return t


C = TypeVar("C")


def training_config(
    base: C, *, max_seconds: float | None, max_steps: int | None, **options: Any
) -> C:
    """`base` with the options the user gave (None = keep the recipe's default).

    A budget given alone replaces the recipe's budget instead of adding to it: `--max-seconds`
    alone trains by the clock, `--max-steps` alone by steps, both end at whichever comes first.
    """
    overrides = {k: v for k, v in options.items() if v is not None}
    if max_seconds is not None or max_steps is not None:
        overrides["max_seconds"] = max_seconds
        overrides["max_steps"] = max_steps
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]
