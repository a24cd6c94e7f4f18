"""Train a small OpenCLIP dual encoder from scratch on a folder of captioned images.

The data is any folder of images with caption sidecars (``photo.png`` + ``photo.txt``, one
caption per line), found by the one scanner as `xretrieve.train.data` says. Training uses the
CLIP loss (symmetric InfoNCE with a learnable temperature) over a budget
(`xretrieve.train.schedule`): by default a number of steps, so that every machine trains the
same model, only slower or faster; a wall-clock budget is an option. The result is a model
folder::

    OUT/open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}
    OUT/open_clip_model.safetensors  weights
    OUT/train_report.json            config, steps, seconds, steps/s, threads, final loss

which ``open_clip.create_model_and_transforms("local-dir:OUT")`` and
``xretrieve.encoders.load_encoder("OUT")`` load with the preprocessing used in training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from xretrieve.errors import FolderError, InputError, MediaError, ModelError
from xretrieve.train.data import Sidecars, path_order, scan_training_folder
from xretrieve.train.progress import ProgressLines
from xretrieve.train.schedule import (
    budgeted_steps,
    check_schedule,
    clip_loss,
    steps_per_second,
    torch_threads,
)

__all__ = [
    "DEFAULT_STEPS",
    "IMAGE_SUFFIXES",
    "CaptionedImages",
    "TrainConfig",
    "TrainReport",
    "TrainedModel",
    "encode_text_trimmed",
    "find_captioned_images",
    "fit",
    "load_captioned_images",
    "save_model",
    "train",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
REPORT_FILE = "train_report.json"
#: The recipe's step budget: on the demo world, 913-997 steps of 128 measured R@1 0.85-0.94
#: held out both ways, on any machine (docs/decisions/step-budgets.md, docs/evaluation.md;
#: scripts/demo.sh prints the table); a quiet 2-core CPU ran 1,000 in about 3 minutes.
DEFAULT_STEPS = 1000


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the defaults are the recipe (docs/evaluation.md#the-recipe)."""

    model: str = "xr-small"
    max_seconds: float | None = None
    max_steps: int | None = DEFAULT_STEPS
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup_fraction: float = 0.03
    weight_decay: float = 0.05
    beta2: float = 0.98
    init_logit_scale: float = math.log(10.0)
    max_logit_scale: float = math.log(100.0)
    seed: int = 0
    threads: int | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    log_every: int = 0

    def __post_init__(self) -> None:
        check_schedule(self)


@dataclass(frozen=True)
class TrainReport:
    """What a training run did."""

    out_dir: Path
    steps: int
    epochs: float
    seconds: float
    load_seconds: float
    steps_per_second: float
    threads: int
    final_loss: float
    n_images: int
    n_captions: int
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


@dataclass(frozen=True)
class CaptionedImages:
    """A preloaded training set: preprocessed pixels, tokenised captions, caption ranges."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    caption_start: torch.Tensor
    caption_count: torch.Tensor


def find_captioned_images(data_dir: str | os.PathLike[str]) -> list[tuple[Path, list[str]]]:
    """Images under `data_dir` (recursively, sorted) that have a non-empty caption sidecar."""
    root = Path(data_dir)
    sidecars = Sidecars(root, scan_training_folder(root))
    pairs = []
    for image in path_order(sidecars.scan.images):
        if os.path.splitext(image.rel)[1].lower() not in IMAGE_SUFFIXES:
            continue
        captions = sidecars.captions(image.rel)
        if captions:
            pairs.append((sidecars.path(image.rel), captions))
    if len(pairs) < 2:
        raise FolderError(
            f"{root} holds {len(pairs)} image(s) with a caption sidecar; training needs at least "
            "2 (put captions next to each image: photo.png + photo.txt, one per line)"
        )
    return pairs


def load_captioned_images(
    pairs: Sequence[tuple[Path, list[str]]],
    *,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    progress: ProgressLines | None = None,
) -> CaptionedImages:
    """Decode and preprocess every image once, tokenise every caption once."""

    def load(path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                return preprocess(im.convert("RGB"))
        except OSError as e:
            raise MediaError(path, f"cannot decode image ({e})") from e

    first = load(pairs[0][0])
    # One preallocated tensor: no list of thousands of small tensors to stack at the end.
    pixels = torch.empty((len(pairs), *first.shape), dtype=first.dtype)
    pixels[0] = first
    for i, (path, _) in enumerate(pairs[1:], start=1):
        pixels[i] = load(path)
        if progress is not None:
            progress("loading image", i + 1, len(pairs))
    counts = torch.tensor([len(c) for _, c in pairs], dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    tokens = tokenizer([c for _, caps in pairs for c in caps])
    return CaptionedImages(pixels, tokens, starts, counts)


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` (normalised) run only up to the longest caption in the batch.

    Under the causal mask no position sees what follows it, so the padding after the last
    end-of-text token cannot change the pooled features: cutting it off is exact and cheap.
    """
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1)


class _CompactVocab:
    """Train only the token-embedding rows the captions use, then write them back.

    The CLIP vocabulary has 49k rows but a caption set uses a few hundred; the optimiser would
    otherwise read and write the whole table every step. Ids are renumbered in increasing
    order, so padding stays 0 and end-of-text stays the largest id (argmax pooling holds).
    """

    def __init__(self, model: Any, tokens: torch.Tensor) -> None:
        self.model = model
        self.full: Any = model.token_embedding
        used = torch.unique(torch.cat([tokens.flatten(), torch.zeros(1, dtype=tokens.dtype)]))
        self.used = used
        self.lookup = torch.zeros(self.full.num_embeddings, dtype=tokens.dtype)
        self.lookup[used] = torch.arange(len(used), dtype=tokens.dtype)
        self.small = torch.nn.Embedding(len(used), self.full.embedding_dim)
        with torch.no_grad():
            self.small.weight.copy_(self.full.weight[used])

    def __enter__(self) -> _CompactVocab:
        self.model.token_embedding = self.small
        return self

    def remap(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lookup[tokens]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            self.full.weight[self.used] = self.small.weight
        self.model.token_embedding = self.full


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay only matrices of weights; gains, biases, embeddings and the temperature stay free.
    decay: list[torch.nn.Parameter] = []
    free: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (free if no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": free, "weight_decay": 0.0},
    ]


def _model_cfg(name: str) -> dict[str, Any]:
    import open_clip

    from xretrieve.encoders import list_models

    if name not in list_models():
        raise InputError(
            f"unknown model config {name!r}: see list_models() (register your own config "
            "with register_model_config())",
            code=InputError.UNKNOWN_MODEL,
        )
    cfg = open_clip.get_model_config(name)
    if cfg is None or "text_cfg" not in cfg or "hf_model_name" in cfg["text_cfg"]:
        raise InputError(f"model config {name!r} is not a from-scratch open_clip CLIP config")
    return dict(cfg)


def _preprocess_cfg(model_cfg: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return {
        "size": size,
        "mode": "RGB",
        "mean": list(config.mean),
        "std": list(config.std),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def _write_model_folder(
    out_dir: Path,
    model: torch.nn.Module,
    *,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    report: dict[str, Any],
) -> None:
    """Write the folder beside `out_dir`, then swap it in; an old `out_dir` survives failures."""
    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        for name, obj in (
            (CONFIG_FILE, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}),
            (REPORT_FILE, report),
        ):
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)
                f.write("\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_out_dir(out_dir: Path) -> None:
    is_model = (out_dir / CONFIG_FILE).is_file()
    empty = out_dir.is_dir() and not any(out_dir.iterdir())
    if out_dir.exists() and not is_model and not empty:
        raise FolderError(
            f"{out_dir} exists and is not a model folder: refusing to replace it "
            "(pick a new output folder)"
        )


@dataclass(frozen=True)
class TrainedModel:
    """A trained model in memory, with what is needed to save and reload it."""

    model: torch.nn.Module
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    steps: int
    seconds: float
    load_seconds: float
    steps_per_second: float
    threads: int
    final_loss: float
    n_images: int
    n_captions: int
    config: TrainConfig


def fit(
    data_dir: str | os.PathLike[str],
    *,
    config: TrainConfig = TrainConfig(),
    progress: ProgressLines | None = None,
) -> TrainedModel:
    """Train a CLIP model from scratch on the captioned images in `data_dir` (kept in memory).

    `progress` (None: silent) gets the images loaded, then the steps and the running loss.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    t_start = time.perf_counter()
    model_cfg = _model_cfg(config.model)
    pre_cfg = _preprocess_cfg(model_cfg, config)
    try:
        with torch_threads(config.threads) as threads:
            torch.manual_seed(config.seed)
            model = open_clip.model.CLIP(
                **{**model_cfg, "init_logit_scale": config.init_logit_scale}
            )
            preprocess = image_transform_v2(PreprocessCfg(**pre_cfg), is_train=False)
            tokenizer = open_clip.get_tokenizer(config.model)
            pairs = find_captioned_images(data_dir)
            data = load_captioned_images(
                pairs, preprocess=preprocess, tokenizer=tokenizer, progress=progress
            )
            load_seconds = time.perf_counter() - t_start
            steps, loss = _fit(model, data, config=config, t_start=t_start, progress=progress)
    except (RuntimeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise ModelError(f"training failed: {str(e).strip().splitlines()[0]}") from e
    model.eval()
    seconds = time.perf_counter() - t_start
    return TrainedModel(
        model=model,
        model_cfg=model_cfg,
        preprocess_cfg=pre_cfg,
        steps=steps,
        seconds=round(seconds, 2),
        load_seconds=round(load_seconds, 2),
        steps_per_second=steps_per_second(steps, seconds - load_seconds),
        threads=threads,
        final_loss=round(loss, 4),
        n_images=len(pairs),
        n_captions=len(data.tokens),
        config=config,
    )


def save_model(trained: TrainedModel, out_dir: str | os.PathLike[str]) -> TrainReport:
    """Write `trained` as an open_clip model folder, atomically replacing an old one."""
    out = Path(out_dir)
    _check_out_dir(out)
    report = TrainReport(
        out_dir=out,
        steps=trained.steps,
        epochs=round(trained.steps * trained.config.batch_size / trained.n_images, 2),
        seconds=trained.seconds,
        load_seconds=trained.load_seconds,
        steps_per_second=trained.steps_per_second,
        threads=trained.threads,
        final_loss=trained.final_loss,
        n_images=trained.n_images,
        n_captions=trained.n_captions,
        config=trained.config,
    )
    _write_model_folder(
        out,
        trained.model,
        model_cfg=trained.model_cfg,
        preprocess_cfg=trained.preprocess_cfg,
        report={"format": 1, **report.to_dict()},
    )
    return report


def train(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: TrainConfig = TrainConfig(),
    progress: ProgressLines | None = None,
) -> TrainReport:
    """Train a CLIP model from scratch on captioned images in `data_dir`; save it to `out_dir`."""
    # Checked first so that a wrong output folder fails before minutes of training.
    _check_out_dir(Path(out_dir))
    return save_model(fit(data_dir, config=config, progress=progress), out_dir)


def _fit(
    model: Any,
    data: CaptionedImages,
    *,
    config: TrainConfig,
    t_start: float,
    progress: ProgressLines | None,
) -> tuple[int, float]:
    """The training loop; returns (steps, mean loss of the last steps)."""
    model.train()
    with _CompactVocab(model, data.tokens) as vocab:
        tokens = vocab.remap(data.tokens)
        opt = torch.optim.AdamW(
            _param_groups(model, config.weight_decay),
            lr=config.lr,
            betas=(0.9, config.beta2),
            eps=1e-6,
        )
        return _loop(model, data, tokens, opt, config=config, t_start=t_start, progress=progress)


def _loop(
    model: Any,
    data: CaptionedImages,
    tokens: torch.Tensor,
    opt: torch.optim.Optimizer,
    *,
    config: TrainConfig,
    t_start: float,
    progress: ProgressLines | None,
) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(config.seed)
    steps = 0
    recent: list[float] = []
    for st in budgeted_steps(config, t_start=t_start, n=len(data.pixels), gen=gen):
        for group in opt.param_groups:
            group["lr"] = st.lr
        idx = st.idx
        pick = (
            data.caption_start[idx]
            + (torch.rand(len(idx), generator=gen) * data.caption_count[idx]).long()
        )
        img = model.encode_image(data.pixels[idx], normalize=True)
        txt = encode_text_trimmed(model, tokens[pick])
        loss = clip_loss(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, config.max_logit_scale)
        steps = st.number + 1
        recent = [*recent[-19:], loss.item()]
        if progress is not None:
            progress("step", steps, config.max_steps, loss=sum(recent) / len(recent))
        if config.log_every and steps % config.log_every == 0:
            print(
                f"step {steps} t={st.elapsed:.0f}s ({steps / max(st.elapsed, 1e-9):.2f} steps/s) "
                f"lr={opt.param_groups[0]['lr']:.2e} "
                f"loss={sum(recent) / len(recent):.3f} T={model.logit_scale.exp().item():.1f}",
                flush=True,
            )
    return steps, sum(recent) / max(len(recent), 1)
