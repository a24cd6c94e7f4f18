"""Weights files: tensors only, never code; a file that cannot be loaded is one line.

A weights file may come from someone else. A bare pickle (not a torch zip checkpoint, not
safetensors) can only hold Python objects, which run code when loaded: `check_weights_file`
refuses it by its first bytes, before any loader sees it. Torch checkpoints are loaded with
torch's tensors-only unpickler (open_clip's default); what that unpickler, safetensors or an
empty file refuses is one of `LOAD_ERRORS`, which the loaders turn into one `ModelError` line
(`load_error`). `weights_fingerprint` is the one hash of a module's weights: equal weights give
equal fingerprints whichever tower they belong to.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from xretrieve.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOAD_ERRORS",
    "WEIGHT_FILES",
    "check_weights_file",
    "load_error",
    "weights_fingerprint",
]

#: What loading a damaged or foreign weights file raises besides OSError/ValueError/RuntimeError
#: (torch's tensors-only unpickler fails on random bytes with whatever its opcode walk hits).
LOAD_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError,
    EOFError,
    SafetensorError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    struct.error,
)
#: The weights files open_clip reads from a model folder.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_ZIP = b"PK\x03\x04"


def check_weights_file(path: str | os.PathLike[str]) -> None:
    """Refuse with `ModelError` a weights file that is a bare pickle (it would hold code)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read weights {p}: {e.strerror}") from None
    # Pickle protocols 2-5 open with 0x80 and the protocol number; a torch checkpoint is a zip.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head != _ZIP:
        raise ModelError(
            f"{p} is a pickle file, not model weights: refused without loading it (a pickle "
            "can run code); use safetensors weights or a torch zip checkpoint"
        )


def load_error(what: str, e: BaseException) -> ModelError:
    """One `ModelError` line for a weights file that failed to load with `e`."""
    if isinstance(e, pickle.UnpicklingError):
        reason = (
            "not a tensors-only checkpoint (refused without running what it holds); "
            "use safetensors weights"
        )
    elif isinstance(e, EOFError):
        reason = "the file is empty or truncated"
    else:
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
    return ModelError(f"cannot load {what}: {reason}")


def weights_fingerprint(module: torch.nn.Module, *, exclude: Collection[str] = ()) -> str:
    """sha256 over state names, shapes and bytes (less `exclude`): equal weights, equal print."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if name in exclude:
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:32]
