"""Train the audio tower into a model folder, against its frozen image and text towers.

Locked-tower tuning (as LiT and Wav2CLIP do): the image and text towers of a model folder are
never updated. Their embeddings of the training pairs are computed once, then only the audio
tower (`xretrieve.encoders.audio_tower`) learns, with the symmetric contrastive loss against
captions and/or images that share the sound's stem (``clip.wav`` + ``clip.txt`` +
``clip.png``), on the schedule of `xretrieve.train.schedule` (a step budget by default, so
every machine trains the same tower). The data is found by the one
scanner as `xretrieve.train.data` says; the tower is saved with `save_audio_tower`, so
existing image and text vectors stay valid.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from xretrieve.encoders.audio_tower import (
    AudioTower,
    AudioTowerConfig,
    save_audio_tower,
    tower_fingerprint,
)
from xretrieve.encoders.features import MelConfig, windows
from xretrieve.errors import FolderError, InputError, ModelError
from xretrieve.media.audio import decode_audio
from xretrieve.train.data import Sidecars, path_order, scan_training_folder, training_split
from xretrieve.train.progress import ProgressLines
from xretrieve.train.schedule import (
    budgeted_steps,
    check_schedule,
    clip_loss,
    steps_per_second,
    torch_threads,
)

if TYPE_CHECKING:
    from xretrieve.encoders import Encoder

__all__ = [
    "DEFAULT_AUDIO_STEPS",
    "AudioPair",
    "AudioTrainConfig",
    "AudioTrainReport",
    "find_audio_pairs",
    "train_audio",
    "with_overrides",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: The recipe's step budget: well above the steps that met every audio target when the demo
#: trained by the clock (912-1,170 of 256; docs/decisions/step-budgets.md, measured with
#: scripts/demo_audio.sh).
DEFAULT_AUDIO_STEPS = 1200


@dataclass(frozen=True)
class AudioPair:
    """A sound with what it is paired with: captions (sidecar .txt) and/or an image (same stem)."""

    audio: Path
    captions: tuple[str, ...]
    image: Path | None


def find_audio_pairs(data_dir: str | os.PathLike[str]) -> list[AudioPair]:
    """Sounds under `data_dir` (recursively, sorted) with a caption sidecar and/or an image.

    A world folder (with ``world.json``) means its ``train/`` split. A sound's image is the
    first of ``.png .jpg .jpeg .webp .bmp`` with its stem.
    """
    root = training_split(data_dir)
    sidecars = Sidecars(root, scan_training_folder(root))
    images = {m.rel for m in sidecars.scan.images}
    pairs = []
    for sound in path_order(sidecars.scan.audio):
        stem = os.path.splitext(sound.rel)[0]
        captions = tuple(sidecars.captions(sound.rel))
        image = next((stem + s for s in _IMAGE_SUFFIXES if stem + s in images), None)
        if captions or image is not None:
            pairs.append(
                AudioPair(
                    sidecars.path(sound.rel),
                    captions,
                    None if image is None else sidecars.path(image),
                )
            )
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


def _load_mels(
    pairs: Sequence[AudioPair],
    tower: AudioTower,
    batch: int = 256,
    progress: ProgressLines | None = None,
) -> torch.Tensor:
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
        if progress is not None:
            progress("loading sound", start + len(chunk), len(pairs))
    return out


def _load_targets(
    pairs: Sequence[AudioPair],
    encoder: Encoder,
    tower: AudioTower,
    progress: ProgressLines | None = None,
) -> _Targets:
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
        if progress is not None:
            progress("encoding image", start + len(idx), len(with_image))
    # Captions repeat (templates, synonyms): embed each distinct one once, index the rest.
    distinct: dict[str, int] = {}
    caption_ids = [distinct.setdefault(c, len(distinct)) for p in pairs for c in p.captions]
    counts = torch.tensor([len(p.captions) for p in pairs], dtype=torch.long)
    return _Targets(
        mel=_load_mels(pairs, tower, progress=progress),
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


@dataclass(frozen=True)
class AudioTrainConfig:
    """How to train the audio tower; defaults are the recipe tuned on a 2-core CPU."""

    max_seconds: float | None = None
    max_steps: int | None = DEFAULT_AUDIO_STEPS
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
    steps_per_second: float
    threads: int
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
    progress: ProgressLines | None = None,
) -> AudioTrainReport:
    """Train an audio tower against the frozen image/text towers of `model_dir`; save it there.

    `progress` (None: silent) gets the sounds and images loaded, then the steps and the loss.
    """
    from xretrieve.encoders import load_encoder

    t_start = time.perf_counter()
    root = Path(model_dir)
    try:
        with torch_threads(config.threads) as threads:
            # Without the audio tower: the one being replaced may be the broken one.
            encoder = load_encoder(
                str(root), pretrained=None, device=device, batch_size=256, audio=False
            )
            if not root.is_dir():
                raise InputError(
                    f"{model_dir} is not a model folder: training writes the audio tower into "
                    "the folder, so pass one (made by `xretrieve train`)"
                )
            pairs = find_audio_pairs(data_dir)
            torch.manual_seed(config.seed)
            tower = AudioTower(config.tower_config(encoder.dim))
            data = _load_targets(pairs, encoder, tower, progress)
            load_seconds = time.perf_counter() - t_start
            steps, loss, scale = _fit(
                tower, data, config=config, t_start=t_start, progress=progress
            )
    except (RuntimeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise ModelError(f"audio training failed: {str(e).strip().splitlines()[0]}") from e
    tower.eval()
    seconds = time.perf_counter() - t_start
    report = AudioTrainReport(
        model_dir=root,
        steps=steps,
        epochs=steps * min(config.batch_size, len(pairs)) / len(pairs),
        seconds=round(seconds, 2),
        load_seconds=round(load_seconds, 2),
        steps_per_second=steps_per_second(steps, seconds - load_seconds),
        threads=threads,
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
    tower: AudioTower,
    data: _Targets,
    *,
    config: AudioTrainConfig,
    t_start: float,
    progress: ProgressLines | None = None,
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
        if progress is not None:
            progress("step", steps, config.max_steps, loss=sum(recent) / len(recent))
        if config.log_every and steps % config.log_every == 0:
            print(
                f"step {steps} t={st.elapsed:.0f}s ({steps / max(st.elapsed, 1e-9):.2f} steps/s) "
                f"lr={opt.param_groups[0]['lr']:.2e} "
                f"loss={sum(recent) / len(recent):.3f} T={logit_scale.exp().item():.1f}",
                flush=True,
            )
    return steps, sum(recent) / max(len(recent), 1), float(logit_scale.detach().exp())


def with_overrides(config: AudioTrainConfig, **overrides: Any) -> AudioTrainConfig:
    """A copy of `config` with the given fields replaced (None values are ignored)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
