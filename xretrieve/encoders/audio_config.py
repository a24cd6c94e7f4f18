"""The audio_config.json of a model folder: its file names, its format, and which tower it names.

A model folder's audio tower is of one of two kinds, read from the config's ``kind``: the
project's own tower (``trained``, `xretrieve.encoders.audio_tower`) or a pretrained CLAP tower
mapped into the space (``clap``, `xretrieve.encoders.clap`). Both tower modules build on this
one; neither imports the other's config handling. No torch here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xretrieve.errors import ModelError

__all__ = [
    "AUDIO_CONFIG_FILE",
    "AUDIO_KINDS",
    "AUDIO_TOWER_FORMAT",
    "AUDIO_WEIGHTS_FILE",
    "TRAINED_FORMAT",
    "audio_kind",
    "has_audio_tower",
    "read_audio_config",
]

AUDIO_CONFIG_FILE = "audio_config.json"
AUDIO_WEIGHTS_FILE = "audio_model.safetensors"
#: Newest audio_config.json format read here: 2 adds `kind` ("trained", "clap"). Trained towers
#: are still written as format 1, which older xretrieve reads.
AUDIO_TOWER_FORMAT = 2
TRAINED_FORMAT = 1
#: The tower kinds a config may name; a config without `kind` is a trained tower.
AUDIO_KINDS = ("trained", "clap")


def has_audio_tower(model_dir: str | os.PathLike[str]) -> bool:
    """True when a model folder carries an audio tower."""
    return (Path(model_dir) / AUDIO_CONFIG_FILE).is_file()


def read_audio_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed audio_config.json of a model folder; `ModelError` when its format is too new.

    A missing or unparsable file raises what reading and `json` raise (`OSError`, `ValueError`):
    the tower loaders turn those into one `ModelError` line that names the folder.
    """
    cfg_path = Path(model_dir) / AUDIO_CONFIG_FILE
    meta: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    if int(meta.get("format", 0)) > AUDIO_TOWER_FORMAT:
        raise ModelError(
            f"{cfg_path} has audio tower format {meta['format']}, newer than this "
            f"xretrieve reads ({AUDIO_TOWER_FORMAT}): upgrade xretrieve"
        )
    return meta


def audio_kind(model_dir: str | os.PathLike[str], meta: dict[str, Any]) -> str:
    """The tower kind `meta` (a folder's audio_config.json) names; `ModelError` for an unknown one."""
    kind = meta.get("kind", "trained")
    if kind not in AUDIO_KINDS:
        cfg_path = Path(model_dir) / AUDIO_CONFIG_FILE
        raise ModelError(f"{cfg_path} names an unknown audio tower kind {kind!r}")
    return str(kind)
