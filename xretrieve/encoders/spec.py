"""What identifies a model and how it runs, without loading it (no torch, no open_clip here).

`ModelSpec` says which weights made the vectors; its `precision` says how they were computed.
`PRECISIONS` are the ways an encoder can run: ``fp32`` is torch on any device (the reference);
``bf16`` is OpenVINO on the CPU or torch autocast on a CUDA GPU; ``fp16`` is CUDA only; ``int8``
is OpenVINO with NNCF-quantised towers, CPU only. Every precision of the same weights maps
into the same space, so an index built in one may be queried in another.
`EncoderLike` is what the indexer and the query layer need of an encoder, whichever runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from xretrieve._types import PRECISIONS
from xretrieve.errors import InputError

if TYPE_CHECKING:
    import numpy.typing as npt
    from PIL import Image

    from xretrieve._types import Vectors

__all__ = [
    "PRECISIONS",
    "EncoderLike",
    "ModelSpec",
    "check_precision",
    "cuda_present",
    "runtime_of",
]


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
    #: How the vectors were computed (one of `PRECISIONS`); the fingerprint is the fp32 weights'.
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["towers"] = list(self.towers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        optional = {"towers", "audio_fingerprint", "precision"}
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k not in optional or k in d}
        if "towers" in kw:
            kw["towers"] = tuple(kw["towers"])
        return cls(**kw)


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded, read without importing torch (a cheap first look)."""
    return Path("/proc/driver/nvidia/version").exists()


def _on_cuda(device: str) -> bool:
    if device == "auto":
        if not cuda_present():
            return False
        import torch

        return bool(torch.cuda.is_available())
    return device.startswith("cuda")


def check_precision(precision: str, device: str = "auto") -> str:
    """Refuse with `InputError` a precision this device cannot run; return the runtime's name.

    The runtime is ``torch`` or ``openvino`` (`runtime_of`).
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    cuda = _on_cuda(device)
    if precision == "fp16" and not cuda:
        raise InputError(
            "precision fp16 runs on a CUDA GPU; on the CPU use bf16 or int8",
            code=InputError.GPU_ONLY_PRECISION,
        )
    if precision == "int8" and cuda:
        raise InputError(
            "precision int8 runs on the CPU (OpenVINO); on a GPU use fp16 or bf16",
            code=InputError.CPU_ONLY_PRECISION,
        )
    return runtime_of(precision, cuda=cuda)


def runtime_of(precision: str, *, cuda: bool) -> str:
    """The runtime that computes `precision`: OpenVINO for bf16/int8 on the CPU, else torch."""
    return "openvino" if not cuda and precision in ("bf16", "int8") else "torch"


class EncoderLike(Protocol):
    """What the indexer and the query layer use of an encoder, whichever runtime runs it."""

    spec: ModelSpec
    batch_size: int

    @property
    def dim(self) -> int: ...

    @property
    def audio_sample_rate(self) -> int: ...

    @property
    def preprocess(self) -> Callable[[Image.Image], Any]: ...

    def encode_texts(self, texts: Sequence[str]) -> Vectors: ...

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors: ...

    def encode_pixels(self, pixels: Any) -> Vectors: ...

    def prepare_audio(self, waveform: npt.NDArray[Any]) -> Any: ...

    def encode_prepared_audio(self, prepared: Sequence[Any]) -> Vectors: ...

    def encode_audio(self, items: Sequence[Any]) -> Vectors: ...
