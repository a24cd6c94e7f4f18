"""What a process running xretrieve as a program sets up: `configure_process`.

`import xretrieve` changes nothing in the host process; the CLI (and so `xretrieve serve`)
calls `configure_process()` at start, and a library user who wants the same calls it before
anything imports torch.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["configure_process"]


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
