"""CLI: `xretrieve serve` runs the HTTP search service and its page (needs the `serve` extra)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from xretrieve.cli._app import (
    DEFAULT_INDEX,
    DeviceOpt,
    ModelConfigOpt,
    PrecisionOpt,
    app,
    err,
    fail,
    register,
)
from xretrieve.errors import InputError, XRetrieveError

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _indexes(values: list[str]) -> dict[str, Path]:
    """`--index` values (PATH or NAME=PATH) as name -> folder; names must differ."""
    from xretrieve.serve import index_name

    out: dict[str, Path] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if sep and name and set(name) <= _NAME_CHARS:
            path = Path(rest).expanduser()
        else:
            path = Path(v).expanduser()
            name = index_name(path)
        if name in out:
            raise InputError(f"two indexes are named {name!r}: name them, --index NAME=PATH")
        out[name] = path
    return out


@app.command("serve")
def serve_cmd(
    index: Annotated[
        list[str] | None,
        typer.Option(
            "--index",
            "-i",
            help="Index folder to serve, PATH or NAME=PATH (repeatable; the name defaults to "
            "the folder's).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on. Anything but loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="XRETRIEVE_TOKEN",
            help="Bearer token every /api call must carry (or env XRETRIEVE_TOKEN).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="Worker threads for searches and thumbnails.", min=1, max=256)
    ] = 4,
    queue: Annotated[
        int, typer.Option(help="Requests that may wait for a worker before 503.", min=0)
    ] = 32,
    cors: Annotated[
        list[str] | None,
        typer.Option("--cors", help="Allow browser pages from this origin (repeatable)."),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest uploaded image (MB).", min=0.001)
    ] = 20.0,
    max_k: Annotated[int, typer.Option("--max-k", help="Largest offset + k.", min=1)] = 1000,
    refresh: Annotated[
        float,
        typer.Option("--refresh", help="Seconds between checks for a new index generation."),
    ] = 1.0,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (URLs may hold a token).")
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    model_config: ModelConfigOpt = None,
) -> None:
    """Serve indexes over HTTP: a JSON API (docs at /docs) and a search page at /."""
    from xretrieve.serve import LOOPBACK_HOSTS, ServeConfig

    try:
        import uvicorn

        from xretrieve.serve import create_app
    except ImportError as e:
        err.print(f"error: serving needs the serve extra: pip install 'xretrieve[serve]' ({e})")
        raise typer.Exit(code=1) from None
    if host not in LOOPBACK_HOSTS:
        err.print(f"warning: --host {host} makes the API reachable from other machines")
        if not token:
            err.print("error: listening beyond loopback needs --token (or XRETRIEVE_TOKEN)")
            raise typer.Exit(code=2)
    try:
        register(model_config)
        config = ServeConfig(
            indexes=_indexes(list(index or [str(DEFAULT_INDEX)])),
            token=token or None,
            threads=threads,
            queue=queue,
            max_upload_bytes=int(max_upload_mb * (1 << 20)),
            max_k=max_k,
            cors=tuple(cors or ()),
            device=device,
            precision=precision,
            refresh_interval=refresh,
        ).validate()
        web = create_app(config)  # opens the indexes and loads their models now
    except XRetrieveError as e:
        if isinstance(e, InputError) and "token" in str(e):
            e = InputError(f"{e} (--token / XRETRIEVE_TOKEN)")
        fail(e)
    log = logging.getLogger("xretrieve.serve")
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())
    log.propagate = False
    shown = "[::1]" if host == "::1" else host
    err.print(f"serving {', '.join(config.indexes)} at http://{shown}:{port}/ (Ctrl-C stops)")
    server = uvicorn.Server(
        uvicorn.Config(
            web,
            host=host,
            port=port,
            access_log=access_log,
            log_level="info",
            timeout_graceful_shutdown=5,
        )
    )
    # uvicorn re-raises the Ctrl-C it handled once its shutdown is done: that is a clean stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise typer.Exit(code=1)  # could not listen (uvicorn said why)
