"""The `xretrieve` command line: the only place errors become messages and exit codes.

One module per stage, each registering its commands on the shared typer app:
`training` (make-world, train, eval, models), `indexing` (index, info), `searching`
(search, caption).
"""

from __future__ import annotations

import importlib

from xretrieve._process import configure_process
from xretrieve.cli._app import app

__all__ = ["app", "main"]

# Importing a module registers its commands; this order is the order `--help` lists.
for _name in ("training", "indexing", "searching", "corpus", "serving"):
    importlib.import_module(f"xretrieve.cli.{_name}")


def main() -> None:
    """Console-script entry point."""
    configure_process()
    app()
