"""Training and evaluation: the demo world, CLIP and audio-tower training, CLAP fitting, R@K.

    world, world_audio   a deterministic synthetic world of captioned (and sounding) scenes
    data                 training data found through the one scanner (`xretrieve.media.scan`)
    schedule             the budget, learning-rate schedule and loss every loop shares
    clip                 train a small CLIP from scratch into a model folder
    audio                train an audio tower against a model folder's frozen towers
    clap_fit             fit a pretrained CLAP tower into a model folder's space
    evaluate, evaluate_audio   recall@K on a world's held-out split, chance beside
    datasets, retrieval  image-caption sets (folder, CSV/TSV, COCO, Karpathy) and their R@K

`train` uses the rest of the package, and nothing in the package imports `xretrieve.train`
(only the CLI's training commands do): a search never loads it. Names below load on first
use, so `xretrieve make-world` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xretrieve.train.audio import AudioTrainConfig, AudioTrainReport, train_audio
    from xretrieve.train.clap_fit import ClapFit, ClapReport, add_clap
    from xretrieve.train.clip import TrainConfig, TrainedModel, TrainReport, fit, save_model, train
    from xretrieve.train.datasets import EvalSet, load_eval_set
    from xretrieve.train.evaluate import EvalReport, evaluate_world
    from xretrieve.train.evaluate_audio import AudioEvalReport, evaluate_audio
    from xretrieve.train.retrieval import evaluate_retrieval
    from xretrieve.train.world import WorldInfo, make_world
    from xretrieve.train.world_audio import AudioWorldInfo, add_audio_to_world

_LAZY = {
    "AudioTrainConfig": "xretrieve.train.audio",
    "AudioTrainReport": "xretrieve.train.audio",
    "train_audio": "xretrieve.train.audio",
    "ClapFit": "xretrieve.train.clap_fit",
    "ClapReport": "xretrieve.train.clap_fit",
    "add_clap": "xretrieve.train.clap_fit",
    "TrainConfig": "xretrieve.train.clip",
    "TrainReport": "xretrieve.train.clip",
    "TrainedModel": "xretrieve.train.clip",
    "fit": "xretrieve.train.clip",
    "save_model": "xretrieve.train.clip",
    "train": "xretrieve.train.clip",
    "EvalSet": "xretrieve.train.datasets",
    "load_eval_set": "xretrieve.train.datasets",
    "EvalReport": "xretrieve.train.evaluate",
    "evaluate_world": "xretrieve.train.evaluate",
    "AudioEvalReport": "xretrieve.train.evaluate_audio",
    "evaluate_audio": "xretrieve.train.evaluate_audio",
    "evaluate_retrieval": "xretrieve.train.retrieval",
    "WorldInfo": "xretrieve.train.world",
    "make_world": "xretrieve.train.world",
    "AudioWorldInfo": "xretrieve.train.world_audio",
    "add_audio_to_world": "xretrieve.train.world_audio",
}

__all__ = [
    "AudioEvalReport",
    "AudioTrainConfig",
    "AudioTrainReport",
    "AudioWorldInfo",
    "ClapFit",
    "ClapReport",
    "EvalReport",
    "EvalSet",
    "TrainConfig",
    "TrainReport",
    "TrainedModel",
    "WorldInfo",
    "add_audio_to_world",
    "add_clap",
    "evaluate_audio",
    "evaluate_retrieval",
    "evaluate_world",
    "fit",
    "load_eval_set",
    "make_world",
    "save_model",
    "train",
    "train_audio",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xretrieve.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
