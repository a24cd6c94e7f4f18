"""The audio tower: a small CNN over log-mel windows, trained into a frozen CLIP space.

The image and text towers of a model folder are never updated by audio training
(`xretrieve.train.audio`), so existing image and text vectors stay valid; the tower is written
into the model folder beside open_clip's files, weights first, config (naming the weights'
sha256) last::

    MODEL/open_clip_config.json, open_clip_model.safetensors   image + text (untouched)
    MODEL/audio_model.safetensors                              audio tower weights
    MODEL/audio_config.json                                    architecture, features, weights
                                                               sha256, image/text fingerprint
                                                               trained against, train report

`xretrieve.encoders.load_encoder(MODEL)` loads all three towers. The audio tower may instead
be a pretrained CLAP tower mapped into the space (``kind: "clap"`` in the config, see
`xretrieve.encoders.clap`); `load_audio_tower` loads either kind (the config and its kind are
read by `xretrieve.encoders.audio_config`, below both towers), and both offer `AudioTowerLike`
(`xretrieve.encoders.audio_protocol`). Training lives in `xretrieve.train.audio`; this module
never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from xretrieve._fs import atomic_write_bytes, fsync_dir, sha256_file
from xretrieve.encoders.audio_config import (
    AUDIO_CONFIG_FILE,
    AUDIO_TOWER_FORMAT,
    AUDIO_WEIGHTS_FILE,
    TRAINED_FORMAT,
    audio_kind,
    has_audio_tower,
    read_audio_config,
)
from xretrieve.encoders.audio_protocol import AudioTowerLike
from xretrieve.encoders.clap import load_clap_tower
from xretrieve.encoders.features import MelConfig, log_mel, mel_filterbank, windows
from xretrieve.encoders.weights import weights_fingerprint
from xretrieve.errors import FolderError, InputError, ModelError

__all__ = [
    "AUDIO_CONFIG_FILE",
    "AUDIO_TOWER_FORMAT",
    "AUDIO_WEIGHTS_FILE",
    "AudioTower",
    "AudioTowerConfig",
    "AudioTowerLike",
    "has_audio_tower",
    "load_audio_tower",
    "save_audio_tower",
    "tower_fingerprint",
]

#: State entries that are not learned weights: the filterbank is rebuilt from the config.
_NOT_WEIGHTS = ("filterbank",)


@dataclass(frozen=True)
class AudioTowerConfig:
    """Architecture of the audio tower and the features it reads."""

    embed_dim: int
    mel: MelConfig = field(default_factory=MelConfig)
    #: Output channels of the 1-D convolutions over time (mel bands are the input channels).
    channels: tuple[int, ...] = (128, 128, 256, 256)
    #: Time steps kept by the final pooling: the head sees *when* things happen in a window.
    pooled_time: int = 8
    hidden: int = 512

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioTowerConfig:
        return cls(
            embed_dim=int(d["embed_dim"]),
            mel=MelConfig.from_dict(d["mel"]),
            channels=tuple(int(c) for c in d["channels"]),
            pooled_time=int(d["pooled_time"]),
            hidden=int(d["hidden"]),
        )


class AudioTower(nn.Module):
    """Waveform windows (b, samples) -> log-mel -> 1-D CNN over time -> unit vectors (b, d)."""

    def __init__(self, cfg: AudioTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("filterbank", torch.from_numpy(mel_filterbank(cfg.mel)))
        self.input_norm = nn.BatchNorm1d(cfg.mel.n_mels)
        layers: list[nn.Module] = []
        c_in = cfg.mel.n_mels
        for i, c_out in enumerate(cfg.channels):
            # The first layer looks at 5 frames; the middle ones halve the time resolution.
            k, stride = (5, 1) if i == 0 else (3, 2 if i < len(cfg.channels) - 1 else 1)
            layers += [
                nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm1d(c_out),
                nn.GELU(),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(cfg.pooled_time)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * cfg.pooled_time, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.embed_dim),
        )

    @property
    def sample_rate(self) -> int:
        return self.cfg.mel.sample_rate

    @property
    def window_samples(self) -> int:
        return self.cfg.mel.window_samples

    def windows(self, waveform: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Windows (w, window_samples) covering a waveform; a short clip is zero-padded."""
        return windows(waveform, self.window_samples)

    def prepare(self, waveform: npt.NDArray[np.float32]) -> torch.Tensor:
        """Log-mel features (w, n_mels, frames) of a clip's windows, computed on the CPU;
        on another device, the windows themselves (features are then made in `embed`)."""
        waves = torch.from_numpy(self.windows(waveform))
        fb: torch.Tensor = self.filterbank  # type: ignore[assignment]
        if fb.device.type != "cpu":
            return waves
        with torch.inference_mode():
            return self.features(waves)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit vectors of `prepare` rows: log-mel features (3-D) or waveform windows (2-D)."""
        return self.forward_features(inputs) if inputs.ndim == 3 else self(inputs)

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """Log-mel features (b, n_mels, frames) of waveform windows (b, samples)."""
        fb: torch.Tensor = self.filterbank  # type: ignore[assignment]
        return log_mel(waves, self.cfg.mel, fb)

    def forward_features(self, mel: torch.Tensor) -> torch.Tensor:
        """Unit vectors (b, d) from log-mel features (b, n_mels, frames)."""
        x = self.convs(self.input_norm(mel))
        return F.normalize(self.head(self.pool(x)), dim=-1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(waves))


def _state(tower: AudioTower) -> dict[str, torch.Tensor]:
    """The learned weights, on the CPU: what is saved and what the fingerprint covers."""
    return {
        k: v.detach().contiguous().cpu()
        for k, v in tower.state_dict().items()
        if k not in _NOT_WEIGHTS
    }


def tower_fingerprint(tower: AudioTower) -> str:
    """The fingerprint of the tower's learned weights (`weights_fingerprint`, as image/text)."""
    return weights_fingerprint(tower, exclude=_NOT_WEIGHTS)


def save_audio_tower(
    model_dir: str | os.PathLike[str],
    tower: AudioTower,
    *,
    base_fingerprint: str,
    report: dict[str, Any] | None = None,
) -> None:
    """Write the tower into a model folder: weights first, then the config that names them.

    The config carries the weights' sha256, so a crash between the two renames leaves a
    folder whose loader refuses the mismatched pair instead of running the wrong weights.
    """
    from safetensors.torch import save

    root = Path(model_dir)
    if not root.is_dir():
        raise FolderError(f"model folder not found: {root}")
    blob = save(_state(tower))
    config = {
        "format": TRAINED_FORMAT,
        "tower": tower.cfg.to_dict(),
        "weights_file": AUDIO_WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "fingerprint": tower_fingerprint(tower),
        "trained_against": base_fingerprint,
        "report": report or {},
    }
    atomic_write_bytes(root / AUDIO_WEIGHTS_FILE, blob)
    atomic_write_bytes(
        root / AUDIO_CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8")
    )
    fsync_dir(root)


def load_audio_tower(
    model_dir: str | os.PathLike[str],
    *,
    base_fingerprint: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[AudioTowerLike, str]:
    """Load the audio tower of a model folder, of either kind; (tower in eval mode, fingerprint)."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    cfg_path = root / AUDIO_CONFIG_FILE
    try:
        meta = read_audio_config(root)
        if audio_kind(root, meta) == "clap":
            return load_clap_tower(root, meta, base_fingerprint=base_fingerprint, device=device)
        cfg = AudioTowerConfig.from_dict(meta["tower"])
        weights = root / meta.get("weights_file", AUDIO_WEIGHTS_FILE)
        if sha256_file(weights) != meta["weights_sha256"]:
            raise ModelError(
                f"{weights} does not match {cfg_path} (sha256 differs): the folder was changed "
                "or a write was interrupted; run `xretrieve train-audio` again"
            )
        if base_fingerprint is not None and meta.get("trained_against") != base_fingerprint:
            raise ModelError(
                f"the audio tower in {root} was trained against other image/text weights "
                f"(fingerprint {meta.get('trained_against')}, this folder has {base_fingerprint}): "
                "its vectors would not share their space; run `xretrieve train-audio` again"
            )
        tower = AudioTower(cfg)
        missing, unexpected = tower.load_state_dict(load_file(str(weights)), strict=False)
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError, SafetensorError) as e:
        if isinstance(e, InputError):
            raise ModelError(f"cannot load the audio tower of {root}: {e}") from e
        raise ModelError(f"cannot load the audio tower of {root}: {e!r}") from e
    if unexpected or [k for k in missing if k != "filterbank"]:
        raise ModelError(
            f"cannot load the audio tower of {root}: weights do not fit the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    tower.to(device).eval()
    return tower, str(meta.get("fingerprint") or tower_fingerprint(tower))
