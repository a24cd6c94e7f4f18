"""Encoders: models that map images, texts and sounds into one L2-normalised space.

`factory` builds a model (open_clip name + pretrained tag, or a local folder) and returns an
`Encoder` (`encoder`, torch) or a `ConvertedEncoder` (`converted`, OpenVINO towers converted
once and cached, for the ``bf16`` and ``int8`` precisions on the CPU); `spec` says what a model
is and how it runs; `sources` remembers each weights source's `ModelSpec`, so a model need not
be loaded to be checked against an index; `tokenize` is open_clip's tokenizer without torch;
`features` computes log-mel inputs; `audio_tower` and `clap` are the audio towers, both built
on `audio_config` (a folder's audio_config.json and the tower kind it names) and offering
`audio_protocol.AudioTowerLike`; `weights` fingerprints weights and refuses a pickle offered as
weights before any loader sees it. Nothing here imports
`xretrieve.train`, and importing this package loads no torch: the names that need it are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xretrieve.encoders.spec import PRECISIONS, EncoderLike, ModelSpec, check_precision

if TYPE_CHECKING:
    from xretrieve.encoders.converted import ConvertedEncoder
    from xretrieve.encoders.encoder import Encoder
    from xretrieve.encoders.factory import (
        DEFAULT_MODEL,
        DEFAULT_PRETRAINED,
        list_models,
        load_encoder,
        register_model_config,
        resolve_device,
    )
    from xretrieve.encoders.weights import weights_fingerprint

#: Names whose modules import torch, open_clip or safetensors: loaded when first asked for.
_LAZY = {
    "ConvertedEncoder": "xretrieve.encoders.converted",
    "Encoder": "xretrieve.encoders.encoder",
    "weights_fingerprint": "xretrieve.encoders.weights",
    "DEFAULT_MODEL": "xretrieve.encoders.factory",
    "DEFAULT_PRETRAINED": "xretrieve.encoders.factory",
    "list_models": "xretrieve.encoders.factory",
    "load_encoder": "xretrieve.encoders.factory",
    "register_model_config": "xretrieve.encoders.factory",
    "resolve_device": "xretrieve.encoders.factory",
}

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "PRECISIONS",
    "ConvertedEncoder",
    "Encoder",
    "EncoderLike",
    "ModelSpec",
    "check_precision",
    "list_models",
    "load_encoder",
    "register_model_config",
    "resolve_device",
    "weights_fingerprint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
