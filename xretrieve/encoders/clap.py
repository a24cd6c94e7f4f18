"""A pretrained CLAP audio tower, bridged into a model folder's CLIP space by a linear map.

CLAP (LAION's contrastive language-audio model) puts sounds and texts in one space of its own;
a model folder's image and text towers define another. A linear map, fitted on sentences that
both text towers embed (`xretrieve.train.clap_fit`), carries CLAP *audio* vectors into the
CLIP space::

    sound -> CLAP feature extractor -> CLAP audio tower -> unit vector x -> normalise(x W + b)

This module loads and runs that tower; it never fits. The adapter lives in the model folder
like a trained tower (`xretrieve.encoders.audio_tower`)::

    MODEL/audio_clap_map.safetensors   W (clap_dim, dim) and b (dim,), float32
    MODEL/audio_config.json            kind "clap", the CLAP folder and its fingerprint, the map's
                                       sha256, the fit statistics, and the image/text fingerprint
                                       the map was fitted against (written last)

The CLAP folder is not copied: it stays where it is and is checked at every load (its
fingerprint hashes its config and weight files with `sha256_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from xretrieve._fs import sha256_file
from xretrieve.encoders.audio_config import AUDIO_CONFIG_FILE
from xretrieve.encoders.features import windows
from xretrieve.errors import ModelError, ModelUnavailableError

__all__ = [
    "CLAP_CONFIG_FORMAT",
    "CLAP_MAP_FILE",
    "ClapAudioTower",
    "adapter_fingerprint",
    "clap_fingerprint",
    "load_clap",
    "load_clap_tower",
    "require_transformers",
]

CLAP_MAP_FILE = "audio_clap_map.safetensors"
#: audio_config.json format that introduced `kind` (`audio_config.audio_kind` reads it).
CLAP_CONFIG_FORMAT = 2
#: Files of a CLAP folder that decide its audio vectors; their bytes make its fingerprint.
_CONFIG_FILES = ("config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


def require_transformers() -> Any:
    """The `transformers` module, or a `ModelError` that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ModelError(
            "the CLAP adapter needs the `transformers` package: pip install -e '.[clap]'"
        ) from e
    return transformers


def _check_clap_dir(clap_dir: Path) -> None:
    if not clap_dir.is_dir():
        raise ModelUnavailableError(f"CLAP folder not found: {clap_dir}")
    cfg = clap_dir / "config.json"
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "clap":
        raise ModelError(
            f"{clap_dir} is not a CLAP checkpoint folder: it needs a config.json with model_type "
            '"clap" beside the weights (a Hugging Face folder such as laion/clap-htsat-unfused)'
        )


def load_clap(
    clap_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[Any, Any, Any]:
    """Load a local CLAP folder: (ClapModel in eval mode, its tokenizer, ClapFeatureExtractor)."""
    root = Path(clap_dir).expanduser()
    _check_clap_dir(root)
    tf = require_transformers()
    try:
        model = tf.ClapModel.from_pretrained(root, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(root, local_files_only=True)
        features = tf.ClapFeatureExtractor.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load the CLAP checkpoint {root}: {first}") from e
    return model.to(device).eval(), tokenizer, features


def clap_fingerprint(clap_dir: str | os.PathLike[str]) -> str:
    """sha256 over the CLAP folder's config, feature extractor config and weight files."""
    h = hashlib.sha256()
    for p in sorted(Path(clap_dir).iterdir()):
        if p.is_file() and (p.name in _CONFIG_FILES or p.name.endswith(_WEIGHT_SUFFIXES)):
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:32]


class ClapAudioTower(nn.Module):
    """Waveform windows (b, samples) -> CLAP audio vectors -> x W + b -> unit vectors (b, d).

    Only CLAP's audio tower and projection are kept; its text tower is dropped after loading.
    """

    def __init__(self, clap: Any, feature_extractor: Any, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.audio_model = clap.audio_model
        self.audio_projection = clap.audio_projection
        self.feature_extractor = feature_extractor
        self.register_buffer("w", w.float())
        self.register_buffer("b", b.float())
        # A window is never longer than CLAP's input, so no crop is taken: "rand_trunc" only
        # picks the unfused features (one channel), "fusion" the fused ones (four).
        fused = bool(clap.config.audio_config.enable_fusion)
        self.truncation = "fusion" if fused else "rand_trunc"

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int:
        return int(self.feature_extractor.nb_max_samples)

    def windows(self, waveform: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Windows (w, window_samples) covering a waveform; a short clip is repeated to fill one."""
        x = np.asarray(waveform, dtype=np.float32)
        if 0 < len(x) < self.window_samples:
            # CLAP's "repeatpad": it was trained on short clips repeated, then zero-padded.
            x = np.tile(x, self.window_samples // len(x))
        return windows(x, self.window_samples)

    def prepare(self, waveform: npt.NDArray[np.float32]) -> torch.Tensor:
        """A clip's windows; CLAP's feature extractor runs batched in `embed`."""
        return torch.from_numpy(self.windows(waveform))

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self(inputs)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = self.w  # type: ignore[assignment]
        b: torch.Tensor = self.b  # type: ignore[assignment]
        feats = self.feature_extractor(
            list(waves.detach().float().cpu().numpy()),
            sampling_rate=self.sample_rate,
            truncation=self.truncation,
            padding="repeatpad",
            return_tensors="pt",
        )
        x = feats["input_features"].to(device=w.device, dtype=torch.float32)
        # All False: the extractor would mark a random clip "longer" (a quirk kept from training),
        # which makes fused models non-deterministic.
        longer = torch.zeros((len(x), 1), dtype=torch.bool, device=w.device)
        pooled = self.audio_model(input_features=x, is_longer=longer).pooler_output
        emb = F.normalize(self.audio_projection(pooled), dim=-1)
        return F.normalize(emb @ w + b, dim=-1)


def adapter_fingerprint(clap_fp: str, map_sha: str) -> str:
    """The adapter's fingerprint: the CLAP folder's and the map file's, combined."""
    return hashlib.sha256(f"clap:{clap_fp}:{map_sha}".encode()).hexdigest()[:32]


def load_clap_tower(
    model_dir: str | os.PathLike[str],
    meta: dict[str, Any],
    *,
    base_fingerprint: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[ClapAudioTower, str]:
    """Load the CLAP adapter described by `meta` (audio_config.json); (tower, fingerprint)."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    redo = "run `xretrieve add-clap` again"
    try:
        clap_dir = Path(meta["clap_dir"])
        map_path = root / meta["map_file"]
        if sha256_file(map_path) != meta["map_sha256"]:
            raise ModelError(
                f"{map_path} does not match {root / AUDIO_CONFIG_FILE} (sha256 differs): the "
                f"folder was changed or a write was interrupted; {redo}"
            )
        if base_fingerprint is not None and meta.get("trained_against") != base_fingerprint:
            raise ModelError(
                f"the CLAP adapter in {root} was fitted against other image/text weights "
                f"(fingerprint {meta.get('trained_against')}, this folder has {base_fingerprint}): "
                f"its vectors would not share their space; {redo}"
            )
        if not clap_dir.is_dir():
            raise ModelError(f"the CLAP folder {clap_dir} that {root} uses is gone: {redo}")
        if clap_fingerprint(clap_dir) != meta["clap_fingerprint"]:
            raise ModelError(
                f"the CLAP folder {clap_dir} changed since the map in {root} was fitted: {redo}"
            )
        tensors = load_file(str(map_path))
        w, b = tensors["w"], tensors["b"]
    except (OSError, KeyError, TypeError, ValueError, SafetensorError) as e:
        raise ModelError(f"cannot load the CLAP adapter of {root}: {e!r}") from e
    clap, _, features = load_clap(clap_dir)
    if w.shape[0] != int(clap.config.projection_dim) or b.shape != (w.shape[1],):
        raise ModelError(
            f"the map in {root} takes {w.shape[0]}-d vectors but {clap_dir} gives "
            f"{clap.config.projection_dim}-d ones: {redo}"
        )
    tower = ClapAudioTower(clap, features, w, b)
    del clap  # drops CLAP's text tower
    return tower.to(device).eval(), str(meta["fingerprint"])
