"""The audio tower: a small CNN over log-mel windows, trained into a frozen CLIP space.

Locked-tower tuning (as LiT and Wav2CLIP do): the image and text towers of a model folder are
never updated. Their embeddings of the training pairs are computed once, then only the audio
tower learns, with the symmetric contrastive loss against captions and/or images that share
the sound's stem (``clip.wav`` + ``clip.txt`` + ``clip.png``). Existing image and text vectors
therefore stay valid; the tower is written into the model folder beside open_clip's files::

    MODEL/open_clip_config.json, open_clip_model.safetensors   image + text (untouched)
    MODEL/audio_model.safetensors                              audio tower weights
    MODEL/audio_config.json                                    architecture, features, weights
                                                               sha256, image/text fingerprint
                                                               trained against, train report

`xretrieve.encoders.load_encoder(MODEL)` loads all three towers. The audio tower may instead
be a pretrained CLAP tower mapped into the space (``kind: "clap"`` in the config, written by
`xretrieve.clap`); `load_audio_tower` loads either kind, and both offer `AudioTowerLike`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from xretrieve._fs import atomic_write_bytes
from xretrieve.encoders.features import MelConfig, log_mel, mel_filterbank, windows
from xretrieve.errors import FolderError, InputError, ModelError
from xretrieve.media.audio import AUDIO_EXTS, decode_audio
from xretrieve.train.clip import budgeted_steps, check_schedule, clip_loss

if TYPE_CHECKING:
    from xretrieve.encoders import Encoder

__all__ = [
    "AUDIO_CONFIG_FILE",
    "AUDIO_WEIGHTS_FILE",
    "AudioPair",
    "AudioTower",
    "AudioTowerConfig",
    "AudioTowerLike",
    "AudioTrainConfig",
    "AudioTrainReport",
    "find_audio_pairs",
    "has_audio_tower",
    "load_audio_tower",
    "save_audio_tower",
    "train_audio",
]

AUDIO_CONFIG_FILE = "audio_config.json"
AUDIO_WEIGHTS_FILE = "audio_model.safetensors"
#: Newest audio_config.json format read here: 2 adds `kind` ("trained", "clap"). Trained towers
#: are still written as format 1, which older xretrieve reads.
AUDIO_TOWER_FORMAT = 2
_TRAINED_FORMAT = 1
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


class AudioTowerLike(Protocol):
    """What `Encoder` needs of an audio tower, trained (`AudioTower`) or CLAP (`xretrieve.clap`)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def window_samples(self) -> int: ...

    def windows(self, waveform: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Windows (w, window_samples) that cover a mono waveform at `sample_rate`."""
        ...

    def prepare(self, waveform: npt.NDArray[np.float32]) -> torch.Tensor:
        """The tower's inputs for one clip, a row per window: the per-clip work that decode
        threads can do ahead of the batched forward pass."""
        ...

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit vectors (b, d) of a batch of rows made by `prepare`."""
        ...

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """Unit vectors (b, d) of waveform windows (b, window_samples)."""
        ...


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
    # The filterbank is rebuilt from the config; it is not a learned weight.
    return {
        k: v.detach().contiguous().cpu() for k, v in tower.state_dict().items() if k != "filterbank"
    }


def tower_fingerprint(tower: AudioTower) -> str:
    """sha256 over the tower's parameter names, shapes and bytes (like the image/text one)."""
    h = hashlib.sha256()
    for name, t in sorted(_state(tower).items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def has_audio_tower(model_dir: str | os.PathLike[str]) -> bool:
    """True when a model folder carries an audio tower."""
    return (Path(model_dir) / AUDIO_CONFIG_FILE).is_file()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        "format": _TRAINED_FORMAT,
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
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if int(meta.get("format", 0)) > AUDIO_TOWER_FORMAT:
            raise ModelError(
                f"{cfg_path} has audio tower format {meta['format']}, newer than this "
                f"xretrieve reads ({AUDIO_TOWER_FORMAT}): upgrade xretrieve"
            )
        kind = meta.get("kind", "trained")
        if kind == "clap":
            from xretrieve.encoders.clap import load_clap_tower

            return load_clap_tower(root, meta, base_fingerprint=base_fingerprint, device=device)
        if kind != "trained":
            raise ModelError(f"{cfg_path} names an unknown audio tower kind {kind!r}")
        cfg = AudioTowerConfig.from_dict(meta["tower"])
        weights = root / meta.get("weights_file", AUDIO_WEIGHTS_FILE)
        if _sha256_file(weights) != meta["weights_sha256"]:
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
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
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


# ---------------------------------------------------------------------------------------------
# Training data


@dataclass(frozen=True)
class AudioPair:
    """A sound with what it is paired with: captions (sidecar .txt) and/or an image (same stem)."""

    audio: Path
    captions: tuple[str, ...]
    image: Path | None


def find_audio_pairs(data_dir: str | os.PathLike[str]) -> list[AudioPair]:
    """Sounds under `data_dir` (recursively, sorted) with a caption sidecar and/or an image.

    A world folder (with ``world.json``) means its ``train/`` split.
    """
    root = Path(data_dir)
    if (root / "world.json").is_file() and (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise FolderError(f"training data folder not found: {root}")
    pairs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
            continue
        side = p.with_suffix(".txt")
        captions: tuple[str, ...] = ()
        if side.is_file():
            lines = side.read_text(encoding="utf-8").splitlines()
            captions = tuple(c.strip() for c in lines if c.strip())
        image = next(
            (p.with_suffix(s) for s in _IMAGE_SUFFIXES if p.with_suffix(s).is_file()), None
        )
        if captions or image is not None:
            pairs.append(AudioPair(p, captions, image))
    if len(pairs) < 2:
        raise FolderError(
            f"{root} holds {len(pairs)} sound(s) with a caption sidecar or an image of the same "
            "stem; training needs at least 2 (clip.wav + clip.txt and/or clip.png)"
        )
    return pairs


@dataclass(frozen=True)
class _Targets:
    """Preloaded training set: log-mel windows and frozen image/text embeddings."""

    mel: torch.Tensor  # (n, n_mels, frames)
    image: torch.Tensor  # (n, d); rows without an image are zero
    has_image: torch.Tensor  # (n,) bool
    text: torch.Tensor  # (distinct captions, d)
    caption_start: torch.Tensor  # (n,) into caption_ids
    caption_count: torch.Tensor  # (n,)
    caption_ids: torch.Tensor  # (captions,) rows of `text`


def _load_mels(pairs: Sequence[AudioPair], tower: AudioTower, batch: int = 256) -> torch.Tensor:
    """Decode every sound once into one window (its first) and compute log-mel features."""
    size = tower.cfg.mel.window_samples
    out = torch.empty((len(pairs), tower.cfg.mel.n_mels, tower.cfg.mel.frames))
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        waves = np.stack(
            [
                windows(
                    decode_audio(p.audio, sample_rate=tower.cfg.mel.sample_rate).waveform, size
                )[0]
                for p in chunk
            ]
        )
        with torch.no_grad():
            out[start : start + len(chunk)] = tower.features(torch.from_numpy(waves))
    return out


def _load_targets(pairs: Sequence[AudioPair], encoder: Encoder, tower: AudioTower) -> _Targets:
    from PIL import Image

    from xretrieve.errors import MediaError

    d = encoder.dim
    has_image = torch.tensor([p.image is not None for p in pairs])
    image = torch.zeros((len(pairs), d))
    with_image = [i for i, p in enumerate(pairs) if p.image is not None]
    for start in range(0, len(with_image), 512):
        idx = with_image[start : start + 512]
        ims = []
        for i in idx:
            path = pairs[i].image
            try:
                with Image.open(path) as im:  # type: ignore[arg-type]
                    ims.append(im.convert("RGB"))
            except OSError as e:
                raise MediaError(path, f"cannot decode image ({e})") from e
        image[idx] = torch.from_numpy(encoder.encode_images(ims))
    # Captions repeat (templates, synonyms): embed each distinct one once, index the rest.
    distinct: dict[str, int] = {}
    caption_ids = [distinct.setdefault(c, len(distinct)) for p in pairs for c in p.captions]
    counts = torch.tensor([len(p.captions) for p in pairs], dtype=torch.long)
    return _Targets(
        mel=_load_mels(pairs, tower),
        image=image,
        has_image=has_image,
        text=_encode_texts(encoder, list(distinct)),
        caption_start=torch.cumsum(counts, 0) - counts,
        caption_count=counts,
        caption_ids=torch.tensor(caption_ids, dtype=torch.long),
    )


def _encode_texts(encoder: Encoder, texts: list[str]) -> torch.Tensor:
    """Frozen text vectors of distinct captions (an empty list gives an empty matrix)."""
    if not texts:
        return torch.zeros((0, encoder.dim))
    return torch.from_numpy(encoder.encode_texts(texts))


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class AudioTrainConfig:
    """How to train the audio tower; defaults are the recipe for a 2-core CPU in 3 minutes."""

    max_seconds: float | None = 175.0
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    text_weight: float = 1.0
    image_weight: float = 1.0
    init_logit_scale: float = math.log(10.0)
    max_logit_scale: float = math.log(100.0)
    #: Random per-clip level change in training, in dB either way (log-mel offset).
    gain_jitter_db: float = 6.0
    mel: MelConfig = field(default_factory=MelConfig)
    channels: tuple[int, ...] = (128, 128, 256, 256)
    pooled_time: int = 8
    hidden: int = 512
    seed: int = 0
    threads: int | None = None
    log_every: int = 0

    def __post_init__(self) -> None:
        check_schedule(self)
        if (
            self.text_weight < 0
            or self.image_weight < 0
            or self.text_weight + self.image_weight == 0
        ):
            raise InputError("text_weight and image_weight must be >= 0 and not both 0")
        if not self.channels or min(self.channels) <= 0 or self.pooled_time <= 0:
            raise InputError("channels must be positive and non-empty, pooled_time positive")

    def tower_config(self, embed_dim: int) -> AudioTowerConfig:
        return AudioTowerConfig(
            embed_dim=embed_dim,
            mel=self.mel,
            channels=self.channels,
            pooled_time=self.pooled_time,
            hidden=self.hidden,
        )


@dataclass(frozen=True)
class AudioTrainReport:
    """What an audio training run did."""

    model_dir: Path
    steps: int
    epochs: float
    seconds: float
    load_seconds: float
    final_loss: float
    n_sounds: int
    n_captions: int
    n_images: int
    fingerprint: str
    config: AudioTrainConfig

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        d["config"]["channels"] = list(self.config.channels)
        return d


def train_audio(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    config: AudioTrainConfig = AudioTrainConfig(),
    device: str = "cpu",
) -> AudioTrainReport:
    """Train an audio tower against the frozen image/text towers of `model_dir`; save it there."""
    from xretrieve.encoders import load_encoder

    t_start = time.perf_counter()
    root = Path(model_dir)
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        # Without the audio tower: the one being replaced may be the broken one.
        encoder = load_encoder(
            str(root), pretrained=None, device=device, batch_size=256, audio=False
        )
        if not root.is_dir():
            raise InputError(
                f"{model_dir} is not a model folder: train-audio writes the audio tower into "
                "the folder, so pass one (made by `xretrieve train`)"
            )
        pairs = find_audio_pairs(data_dir)
        torch.manual_seed(config.seed)
        tower = AudioTower(config.tower_config(encoder.dim))
        data = _load_targets(pairs, encoder, tower)
        load_seconds = time.perf_counter() - t_start
        steps, loss, scale = _fit(tower, data, config=config, t_start=t_start)
    except (RuntimeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise ModelError(f"audio training failed: {str(e).strip().splitlines()[0]}") from e
    finally:
        torch.set_num_threads(old_threads)
    tower.eval()
    seconds = time.perf_counter() - t_start
    report = AudioTrainReport(
        model_dir=root,
        steps=steps,
        epochs=steps * min(config.batch_size, len(pairs)) / len(pairs),
        seconds=round(seconds, 2),
        load_seconds=round(load_seconds, 2),
        final_loss=round(loss, 4),
        n_sounds=len(pairs),
        n_captions=len(data.caption_ids),
        n_images=int(data.has_image.sum()),
        fingerprint=tower_fingerprint(tower),
        config=config,
    )
    save_audio_tower(
        root,
        tower,
        base_fingerprint=encoder.spec.fingerprint,
        report={**report.to_dict(), "logit_scale": round(scale, 3)},
    )
    return report


def _fit(
    tower: AudioTower, data: _Targets, *, config: AudioTrainConfig, t_start: float
) -> tuple[int, float, float]:
    """The training loop; returns (steps, mean loss of the last steps, final logit scale)."""
    logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
    decay = [p for p in tower.parameters() if p.ndim >= 2]
    free = [p for p in tower.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": [*free, logit_scale], "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    gen = torch.Generator().manual_seed(config.seed)
    has_text = data.caption_count > 0
    jitter = config.gain_jitter_db / 10.0  # log10 power units per dB / 10
    steps = 0
    recent: list[float] = []
    tower.train()
    for st in budgeted_steps(config, t_start=t_start, n=len(data.mel), gen=gen):
        for group in opt.param_groups:
            group["lr"] = st.lr
        idx = st.idx
        mel = data.mel[idx]
        if jitter > 0:
            mel = mel + (torch.rand(len(idx), 1, 1, generator=gen) * 2 - 1) * jitter
        emb = tower.forward_features(mel)
        scale = logit_scale.exp()
        loss = torch.zeros(())
        t_rows = has_text[idx]
        if config.text_weight > 0 and int(t_rows.sum()) >= 2:
            sel = idx[t_rows]
            pick = (
                data.caption_start[sel]
                + (torch.rand(len(sel), generator=gen) * data.caption_count[sel]).long()
            )
            target = data.text[data.caption_ids[pick]]
            loss = loss + config.text_weight * clip_loss(emb[t_rows], target, scale)
        i_rows = data.has_image[idx]
        if config.image_weight > 0 and int(i_rows.sum()) >= 2:
            loss = loss + config.image_weight * clip_loss(
                emb[i_rows], data.image[idx[i_rows]], scale
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            logit_scale.clamp_(0, config.max_logit_scale)
        steps = st.number + 1
        recent = [*recent[-19:], loss.item()]
        if config.log_every and steps % config.log_every == 0:
            print(
                f"step {steps} t={st.elapsed:.0f}s lr={opt.param_groups[0]['lr']:.2e} "
                f"loss={sum(recent) / len(recent):.3f} T={logit_scale.exp().item():.1f}",
                flush=True,
            )
    return steps, sum(recent) / max(len(recent), 1), float(logit_scale.detach().exp())


def with_overrides(config: AudioTrainConfig, **overrides: Any) -> AudioTrainConfig:
    """A copy of `config` with the given fields replaced (None values are ignored)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
