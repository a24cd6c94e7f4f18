"""Building encoders: model sources, the architecture registry and the device switch.

`load_encoder` is the one factory. It accepts what open_clip accepts, and fails fast
with one clear line when weights cannot be had:

- a built-in or registered architecture name plus a pretrained tag (``ViT-B-32`` +
  ``laion2b_s34b_b79k``), fetched from the hub by open_clip when there is a network;
- a built-in name plus a local checkpoint file (``pretrained=/path/model.bin``);
- a model folder (``/path/dir`` or ``local-dir:/path/dir``) holding ``open_clip_config.json``
  and weights, which is what ``xretrieve train`` writes;
- a name with ``pretrained=None``: random initialisation (engine tests only).

A model folder may also carry an audio tower (``audio_config.json`` + weights, trained by
`xretrieve.train.audio`, or a pretrained CLAP tower mapped into the space by
`xretrieve.train.clap_fit`); it is loaded beside open_clip's two towers
(`xretrieve.encoders.audio_tower`), recorded in `ModelSpec.towers`, and used by
`Encoder.encode_audio`. Nothing here imports the training code.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xretrieve.encoders.audio_config import has_audio_tower
from xretrieve.encoders.converted import ConvertedEncoder
from xretrieve.encoders.sources import check_remembered, note_config, recall_spec, remember_spec
from xretrieve.encoders.spec import EncoderLike, ModelSpec, check_precision
from xretrieve.encoders.weights import (
    LOAD_ERRORS,
    WEIGHT_FILES,
    check_weights_file,
    load_error,
    weights_fingerprint,
)
from xretrieve.errors import InputError, ModelError, ModelUnavailableError

if TYPE_CHECKING:
    import torch

    from xretrieve.encoders.encoder import Encoder

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "LazyEncoder",
    "build_torch_encoder",
    "list_models",
    "load_encoder",
    "register_model_config",
    "resolve_device",
]

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
_BUILTIN_CONFIGS = Path(__file__).parent.parent / "model_configs"
_HUB_HOST = "huggingface.co"
# open_clip's config registry is a module global that `add_model_config` rebuilds (a rescan),
# so two threads adding at once could lose one's configs: every addition holds this lock,
# and xretrieve's own configs are added once, by the first thread that needs them.
_registered = False
_registry_lock = threading.Lock()


def _ensure_registered() -> None:
    global _registered
    if _registered:
        return
    with _registry_lock:
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
    with _registry_lock:
        before = set(open_clip.list_models())
        open_clip.add_model_config(p)
        added = sorted(set(open_clip.list_models()) - before)
    for name in added if p.is_dir() else [p.stem]:
        note_config(name, p / f"{name}.json" if p.is_dir() else p)
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
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} asked for, but torch sees no CUDA GPU: use device 'cpu'",
            code=InputError.NO_CUDA,
        )
    return torch.device(device)


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
                "(a folder holding open_clip_config.json and weights).",
                code=ModelUnavailableError.OFFLINE,
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
            "list_models() (register your own config with register_model_config())",
            code=InputError.UNKNOWN_MODEL,
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
            "file as the pretrained weights (an open_clip_pytorch_model.bin) or a model folder "
            "as the model (e.g. one made by `xretrieve train`).",
            code=ModelUnavailableError.OFFLINE,
        )
    return model, pretrained


# What open_clip raises for weights it cannot use (damaged, foreign, or holding code).
_LOAD_FAILURES: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    OSError,
    KeyError,
    *LOAD_ERRORS,
)


def load_encoder(
    model: str = DEFAULT_MODEL,
    *,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    batch_size: int = 32,
    audio: bool = True,
    precision: str = "fp32",
    threads: int | None = None,
    lazy: bool = False,
) -> Any:
    """Build an encoder from an architecture + weights, or from a model folder.

    ``precision`` (`spec.PRECISIONS`) picks the runtime: ``fp32`` (and ``fp16``/``bf16`` on a
    CUDA GPU) is torch and returns an `Encoder`; ``bf16`` and ``int8`` on the CPU return a
    `ConvertedEncoder` (OpenVINO), which needs no torch once its towers are converted.
    ``threads`` sets OpenVINO's inference threads (default: every core). ``lazy=True`` gives,
    when this source's spec is remembered, an encoder that loads the model only when it
    first encodes something. ``audio=False`` leaves out a folder's audio tower.
    """
    runtime = check_precision(precision, device)
    if runtime == "openvino":
        spec = recall_spec(model, pretrained, audio=audio)
        donor = None
        if spec is None:
            donor = build_torch_encoder(
                model, pretrained=pretrained, device="cpu", batch_size=batch_size, audio=audio
            )
            spec = donor.spec
        return ConvertedEncoder(
            model=model,
            pretrained=pretrained,
            spec=replace(spec, precision=precision),
            batch_size=batch_size,
            threads=threads,
            audio=audio,
            torch_encoder=donor,
            build=lambda: build_torch_encoder(
                model, pretrained=pretrained, device="cpu", audio=audio
            ),
        )

    def build() -> Encoder:
        return build_torch_encoder(
            model,
            pretrained=pretrained,
            device=device,
            batch_size=batch_size,
            audio=audio,
            precision=precision,
        )

    spec = recall_spec(model, pretrained, audio=audio) if lazy else None
    if spec is not None:
        return LazyEncoder(replace(spec, precision=precision), build, (model, pretrained, audio))
    return build()


class LazyEncoder:
    """An encoder known by its remembered spec, loaded when first used for anything else.

    An unchanged re-index asks only for the spec, and so never loads the model.
    """

    def __init__(self, spec: ModelSpec, build: Any, source: tuple[str, str | None, bool]) -> None:
        self.spec = spec
        self._build = build
        self._source = source
        self._loaded: EncoderLike | None = None
        # Decode threads ask for `preprocess` while the main thread encodes: one build only
        # (two would also share torch's seeded generator and make a random init differ).
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _get(self) -> EncoderLike:
        with self._lock:
            return self._load()

    def _load(self) -> EncoderLike:
        if self._loaded is None:
            enc = self._build()
            check_remembered(self.spec, enc.spec, self._source)
            self._loaded = enc
        return self._loaded

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def build_torch_encoder(
    model: str = DEFAULT_MODEL,
    *,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    batch_size: int = 32,
    audio: bool = True,
    precision: str = "fp32",
) -> Encoder:
    """Build a torch `Encoder` from an architecture + weights, or from a model folder.

    ``audio=False`` leaves out a folder's audio tower (for writers that replace it). The
    model's spec is remembered for its source (`sources`), so a later run can check an index
    against it without loading the model.
    """
    import open_clip
    import torch

    # Lazy: the encoder module imports torch, which `load_encoder` for OpenVINO never needs.
    from xretrieve.encoders.encoder import Encoder

    name, weights = _resolve_source(str(model), pretrained)
    dev = resolve_device(device)
    if weights is None and not name.startswith(("local-dir:", "hf-hub:")):
        # Random init is seeded so that the same name rebuilds the same weights (and fingerprint).
        torch.manual_seed(0)
    # A bare pickle never reaches a loader; what the tensors-only loaders refuse is one line.
    candidates = [Path(weights)] if weights else []
    if name.startswith("local-dir:"):
        candidates += [Path(name[len("local-dir:") :]) / w for w in WEIGHT_FILES]
    for f in candidates:
        if f.is_file():
            check_weights_file(f)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=dev
        )
        tokenizer = open_clip.get_tokenizer(name)
    except _LOAD_FAILURES as e:
        raise load_error(f"model {model} ({pretrained or 'random init'})", e) from e
    net.eval()
    cfg = _model_cfg(name)
    spec = ModelSpec(
        name=name,
        pretrained=weights,
        fingerprint=weights_fingerprint(net),
        dim=int(cfg["embed_dim"]),
        image_size=_as_int_size(cfg["vision_cfg"].get("image_size", 224)),
        context_length=int(cfg.get("text_cfg", {}).get("context_length", 77)),
    )
    audio_tower = None
    if audio and name.startswith("local-dir:"):
        from xretrieve.encoders.audio_tower import load_audio_tower  # imports torch: lazy

        folder = name[len("local-dir:") :]
        if has_audio_tower(folder):
            audio_tower, audio_fp = load_audio_tower(
                folder, base_fingerprint=spec.fingerprint, device=dev
            )
            spec = replace(spec, towers=(*spec.towers, "audio"), audio_fingerprint=audio_fp)
    remember_spec(model, pretrained, spec, audio=audio)
    return Encoder(
        net,
        preprocess,
        tokenizer,
        replace(spec, precision=precision),
        device=dev,
        batch_size=batch_size,
        audio_tower=audio_tower,
        precision=precision,
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
