"""Encoders: models that map images, texts and sounds into one L2-normalised space.

`factory` builds a model (open_clip name + pretrained tag, or a local folder) and returns an
`Encoder` (`encoder`); `features` computes log-mel inputs; `audio_tower` and `clap` are the
audio towers; `weights` refuses a pickle offered as weights before any loader sees it. Nothing
here imports `xretrieve.train`: loading a model never loads training code.
"""

from xretrieve.encoders.encoder import Encoder, ModelSpec, weights_fingerprint
from xretrieve.encoders.factory import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    list_models,
    load_encoder,
    register_model_config,
    resolve_device,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "Encoder",
    "ModelSpec",
    "list_models",
    "load_encoder",
    "register_model_config",
    "resolve_device",
    "weights_fingerprint",
]
