"""Encoders: models that map images, texts and sounds into one L2-normalised space.

`factory` loads a model (open_clip name + pretrained tag, or a local folder) and returns an
`Encoder`; `features` computes log-mel inputs; `audio_tower` and `clap` are the audio towers.
"""

from xretrieve.encoders.factory import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Encoder,
    ModelSpec,
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
]
