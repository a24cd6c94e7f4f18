"""Encoders: turn images and texts into one L2-normalised float32 space (OpenCLIP).

`load_encoder` is the one factory. It accepts what open_clip accepts, and fails fast
with one clear line when weights cannot be had:

- a built-in or registered architecture name plus a pretrained tag (``ViT-B-32`` +
  ``laion2b_s34b_b79k``), fetched from the hub by open_clip when there is a network;
- a built-in name plus a local checkpoint file (``pretrained=/path/model.bin``);
- a model folder (``/path/dir`` or ``local-dir:/path/dir``) holding ``open_clip_config.json``
  and weights, which is what ``xretrieve train`` writes;
- a name with ``pretrained=None``: random initialisation (engine tests only).

A model folder may also carry an audio tower (``audio_config.json`` + weights, written by
``xretrieve train-audio``, see `xretrieve.audio_model`, or a pretrained CLAP tower mapped into
the space by ``xretrieve add-clap``, see `xretrieve.clap`); it is loaded beside open_clip's two
towers, recorded in `ModelSpec.towers`, and used by `Encoder.encode_audio`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from xretrieve._types import Vectors
from xretrieve.errors import InputError, ModelError, ModelUnavailableError

if TYPE_CHECKING:
    from xretrieve.encoders.audio_tower import AudioTowerLike

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "AudioItem",
    "Encoder",
    "ModelSpec",
    "list_models",
    "load_encoder",
    "register_model_config",
    "resolve_device",
]

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
_BUILTIN_CONFIGS = Path(__file__).parent.parent / "model_configs"
_HUB_HOST = "huggingface.co"
_registered = False
#: What `Encoder.encode_audio` takes: a file path, the file's bytes, or (samples, sample_rate)
#: with samples shaped (frames,) or (frames, channels).
AudioItem = str | os.PathLike[str] | bytes | tuple[npt.ArrayLike, int]


def _ensure_registered() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_BUILTIN_CONFIGS)
        _registered = True


def register_model_config(path: str | os.PathLike[str]) -> list[str]:
    """Register an open_clip model config (a JSON file, or a folder of them); return new names."""
    import open_clip

    _ensure_registered()
    p = Path(path)
    if not p.exists():
        raise InputError(f"model config not found: {p}")
    before = set(open_clip.list_models())
    open_clip.add_model_config(p)
    added = sorted(set(open_clip.list_models()) - before)
    if not added and p.is_file() and p.stem not in before:
        raise InputError(
            f"{p} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
        )
    return added


def list_models() -> list[str]:
    """Architecture names that `load_encoder` can build (open_clip's plus xretrieve's own)."""
    import open_clip

    _ensure_registered()
    return list(open_clip.list_models())


def resolve_device(device: str = "auto") -> torch.device:
    """The one CPU/GPU switch for encoders: ``auto`` takes CUDA when torch sees a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu"
        )
    return torch.device(device)


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: how to load it again, and a fingerprint of its weights."""

    name: str
    pretrained: str | None
    fingerprint: str
    dim: int
    image_size: int
    context_length: int
    #: The towers the model has; an audio tower comes from `xretrieve train-audio` or `add-clap`.
    towers: tuple[str, ...] = ("image", "text")
    #: Fingerprint of the audio tower's weights, kept apart from `fingerprint` (image + text) so
    #: that adding or retraining an audio tower leaves image and text vectors valid.
    audio_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["towers"] = list(self.towers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        optional = {"towers", "audio_fingerprint"}
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k not in optional or k in d}
        if "towers" in kw:
            kw["towers"] = tuple(kw["towers"])
        return cls(**kw)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((_HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_tag_checkpoint(model: str, tag: str) -> bool:
    """True when the weights for (model, tag) already sit in the local hub cache."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    hub = cfg.get("hf_hub", "")
    if not hub:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return False
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub[:-1], "")
    for name in ([filename] if filename else []) + [
        "open_clip_pytorch_model.bin",
        "open_clip_model.safetensors",
    ]:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return True
    del open_clip
    return False


def _resolve_source(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Normalise (model, pretrained) to what open_clip accepts; fail early with one line."""
    import open_clip

    _ensure_registered()
    if model.startswith("local-dir:"):
        model = model[len("local-dir:") :]
        if not Path(model).is_dir():
            raise ModelUnavailableError(f"model folder not found: {model}")
    if model.startswith("hf-hub:"):
        if not _hub_reachable():
            raise ModelUnavailableError(
                f"cannot fetch {model}: no network. Pass a local model folder instead "
                "(--model /path/to/dir holding open_clip_config.json and weights)."
            )
        return model, None
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "open_clip_config.json").is_file():
            raise ModelUnavailableError(
                f"{p} is not a model folder: it has no open_clip_config.json "
                "(train one with `xretrieve train`, or pass an architecture name)"
            )
        return f"local-dir:{p.resolve()}", None
    if model not in open_clip.list_models():
        looks_like_path = os.sep in model or model.startswith(".")
        if looks_like_path:
            raise ModelUnavailableError(f"model folder not found: {model}")
        raise InputError(
            f"unknown model {model!r}: pass a model folder, or an architecture from "
            "`xretrieve models` (register your own with --model-config FILE)"
        )
    if pretrained is None or pretrained.lower() == "none":
        return model, None
    if Path(pretrained).expanduser().is_file():
        return model, str(Path(pretrained).expanduser().resolve())
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        if os.sep in pretrained or Path(pretrained).suffix:
            raise ModelUnavailableError(f"checkpoint file not found: {pretrained}")
        raise InputError(
            f"unknown pretrained tag {pretrained!r} for {model}; known tags: {', '.join(tags) or 'none'}"
        )
    if not _cached_tag_checkpoint(model, pretrained) and not _hub_reachable():
        raise ModelUnavailableError(
            f"cannot fetch weights {model}/{pretrained}: no network. Pass a local checkpoint "
            "(--pretrained /path/to/open_clip_pytorch_model.bin) or a model folder "
            "(--model /path/to/dir, e.g. one made by `xretrieve train`)."
        )
    return model, pretrained


def _fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes: equal weights, equal fingerprint."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Encoder:
    """An OpenCLIP model with its preprocessing and tokenizer: images and texts -> unit vectors."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        spec: ModelSpec,
        *,
        device: torch.device,
        batch_size: int = 32,
        audio_tower: AudioTowerLike | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.audio_tower = audio_tower

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def audio_sample_rate(self) -> int:
        """The rate the audio tower reads; decode with ``decode_audio(p, sample_rate=this)``."""
        return self._require_audio().sample_rate

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Apply the model's own inference transform and stack into one batch tensor."""
        return torch.stack([self.preprocess(im.convert("RGB")) for im in images])

    def encode_pixels(self, pixels: torch.Tensor) -> Vectors:
        """Embed an already preprocessed batch (n, 3, H, W)."""
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for sl in _batches(len(pixels), self.batch_size):
                x = pixels[sl].to(self.device)
                out[sl] = self.model.encode_image(x, normalize=True).float().cpu().numpy()  # type: ignore[operator]
        return out

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        """Embed PIL images (any mode) into unit vectors, batch by batch."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for sl in _batches(len(images), self.batch_size):
            out[sl] = self.encode_pixels(self.preprocess_images(images[sl]))
        return out

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        """Embed texts into unit vectors, batch by batch."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for sl in _batches(len(texts), max(self.batch_size, 256)):
                tokens = self.tokenizer(list(texts[sl])).to(self.device)
                out[sl] = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()  # type: ignore[operator]
        return out

    def _require_audio(self) -> AudioTowerLike:
        if self.audio_tower is None:
            raise ModelError(
                f"model {self.spec.name} has no audio tower: train one into its folder with "
                "`xretrieve train-audio MODEL_DIR DATA_DIR` (or map a local pretrained CLAP into it "
                "with `xretrieve add-clap MODEL_DIR CLAP_DIR`)"
            )
        return self.audio_tower

    def encode_waveforms(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> Vectors:
        """Embed mono waveforms already at `audio_sample_rate`; long ones window by window.

        A clip longer than the tower's window is cut into evenly spread windows that cover it;
        its vector is the normalised mean of the windows' vectors.
        """
        return self.encode_prepared_audio([self.prepare_audio(w) for w in waveforms])

    def prepare_audio(self, waveform: npt.NDArray[np.float32]) -> torch.Tensor:
        """One clip's tower inputs, a row per window (thread-safe: decode threads call it)."""
        return self._require_audio().prepare(waveform)

    def encode_prepared_audio(self, prepared: Sequence[torch.Tensor]) -> Vectors:
        """Unit vectors of clips made ready by `prepare_audio`: the mean over each clip's windows."""
        tower = self._require_audio()
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        if not len(prepared):
            return out
        owner = np.repeat(np.arange(len(prepared)), [len(c) for c in prepared])
        stacked = torch.cat(list(prepared))
        emb = np.empty((len(stacked), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for sl in _batches(len(stacked), self.batch_size):
                emb[sl] = tower.embed(stacked[sl].to(self.device)).float().cpu().numpy()
        sums = np.zeros_like(out)
        np.add.at(sums, owner, emb)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        out[:] = sums / np.maximum(norms, 1e-12)
        return out

    def encode_audio(self, items: Sequence[AudioItem]) -> Vectors:
        """Embed sounds (paths, file bytes, or (samples, rate) pairs) into unit vectors.

        Files that cannot be decoded, or are silent or too short, raise `MediaError`. Decoding
        and the per-clip features run in threads, ahead of the tower by up to two batches.
        """
        from xretrieve._threads import bounded_map, default_workers
        from xretrieve.media.audio import decode_audio, prepare_waveform

        rate = self.audio_sample_rate

        def load(item: AudioItem) -> torch.Tensor:
            if isinstance(item, tuple):
                samples, sr = item
                return self.prepare_audio(prepare_waveform(samples, int(sr), sample_rate=rate))
            return self.prepare_audio(decode_audio(item, sample_rate=rate).waveform)

        out = np.empty((len(items), self.dim), dtype=np.float32)
        waves = bounded_map(load, items, workers=default_workers(), window=2 * self.batch_size)
        try:
            for sl in _batches(len(items), self.batch_size):
                batch = [next(waves) for _ in range(sl.stop - sl.start)]
                out[sl] = self.encode_prepared_audio(batch)
        finally:
            waves.close()  # on an error: cancel the decoding not yet started
        return out


def load_encoder(
    model: str = DEFAULT_MODEL,
    *,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    batch_size: int = 32,
    audio: bool = True,
) -> Encoder:
    """Build an `Encoder` from an architecture + weights, or from a model folder.

    ``audio=False`` leaves out a folder's audio tower (for writers that replace it).
    """
    import open_clip

    name, weights = _resolve_source(str(model), pretrained)
    dev = resolve_device(device)
    if weights is None and not name.startswith(("local-dir:", "hf-hub:")):
        # Random init is seeded so that the same name rebuilds the same weights (and fingerprint).
        torch.manual_seed(0)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=dev
        )
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot load model {model} ({pretrained or 'random init'}): {first}"
        ) from e
    net.eval()
    cfg = _model_cfg(name)
    spec = ModelSpec(
        name=name,
        pretrained=weights,
        fingerprint=_fingerprint(net),
        dim=int(cfg["embed_dim"]),
        image_size=_as_int_size(cfg["vision_cfg"].get("image_size", 224)),
        context_length=int(cfg.get("text_cfg", {}).get("context_length", 77)),
    )
    audio_tower = None
    if audio and name.startswith("local-dir:"):
        from xretrieve.encoders.audio_tower import has_audio_tower, load_audio_tower

        folder = name[len("local-dir:") :]
        if has_audio_tower(folder):
            audio_tower, audio_fp = load_audio_tower(
                folder, base_fingerprint=spec.fingerprint, device=dev
            )
            spec = replace(spec, towers=(*spec.towers, "audio"), audio_fingerprint=audio_fp)
    return Encoder(
        net, preprocess, tokenizer, spec, device=dev, batch_size=batch_size, audio_tower=audio_tower
    )


def _as_int_size(size: int | Sequence[int]) -> int:
    return int(size) if isinstance(size, int) else int(size[0])


def _model_cfg(name: str) -> dict[str, Any]:
    import open_clip

    if name.startswith("local-dir:"):
        with open(Path(name[len("local-dir:") :]) / "open_clip_config.json", encoding="utf-8") as f:
            cfg: dict[str, Any] = json.load(f)["model_cfg"]
            return cfg
    got = open_clip.get_model_config(name)
    if got is None:  # pragma: no cover - _resolve_source checked the name
        raise ModelError(f"no config for model {name}")
    return dict(got)
