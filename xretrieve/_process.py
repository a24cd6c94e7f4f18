"""What a process running xretrieve sets up and lets go: `configure_process`, `shutdown`.

`import xretrieve` changes nothing in the host process; the CLI (and so `xretrieve serve`)
calls `configure_process()` at start, and a library user who wants the same calls it before
anything imports torch.

A few things live once per process, made on first use under a lock: the WHERE parser's
DuckDB connection (`query._where_ast`) and the threads that search shards side by side
(`store.ann.topk`). `shutdown()` lets them go, and the next use makes them again. It looks
the modules up in `sys.modules` rather than importing them, so it never loads duckdb or
faiss in a process that did not use them; open_clip's config registry holds nothing to let
go and stays as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["configure_process", "shutdown"]

# Module name -> its function that lets go of what the module holds for the process.
_SHUTDOWNS = (
    ("xretrieve.query._where_ast", "close_parser"),
    ("xretrieve.store.ann.topk", "shutdown_shard_pool"),
)


def configure_process(*, quiet: bool = True) -> None:
    """Passive OpenMP waits (unless the environment says otherwise) and, with `quiet`, quiet libraries.

    OpenMP threads that wait by spinning take the core from a thread that shares it with another
    process: `scripts/bench_train.py` measured 2 torch threads at 0.27x the speed of 1 beside one
    busy process with spinning waits, and even with 1 thread when waiters sleep. It only takes
    effect when called before torch (or another OpenMP user) is imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if quiet:
        # open_clip and huggingface_hub log warnings for expected situations (random init, offline).
        logging.getLogger().setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shutdown() -> None:
    """Close the process-wide resources xretrieve made (WHERE parser, shard search threads).

    Waits for shard searches under way. Safe to call more than once, and from a program that
    goes on using xretrieve: the next use makes what it needs again.
    """
    for module, name in _SHUTDOWNS:
        loaded = sys.modules.get(module)
        if loaded is not None:
            getattr(loaded, name)()
