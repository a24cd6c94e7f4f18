"""The encoder: one object that maps images, texts and sounds into one L2-normalised space.

`Encoder` holds an open_clip model (image + text towers), its inference preprocessing and
tokenizer, and optionally an audio tower (`xretrieve.encoders.audio_protocol`); every `encode_*`
returns float32 unit rows, shape (n, dim), whatever the precision: ``fp32`` runs as is on any
device (no autocast at all, so its vectors are the reference, bit for bit); ``fp16`` and
``bf16`` run the towers under CUDA autocast, on a CUDA device only (the CPU's bf16 and int8
are OpenVINO's, `xretrieve.encoders.converted`), and their rows are cast to float32 and made
unit again. `ModelSpec` says which weights made the vectors:
`weights_fingerprint` (`xretrieve.encoders.weights`, re-exported here) is the one hash of a
tower's weights, so equal weights give equal fingerprints whichever tower they belong to. Models are built by `xretrieve.encoders.load_encoder`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from xretrieve._threads import bounded_map, default_workers
from xretrieve._types import Vectors
from xretrieve.encoders.audio_protocol import AudioTowerLike
from xretrieve.encoders.spec import ModelSpec, check_precision
from xretrieve.encoders.weights import weights_fingerprint
from xretrieve.errors import InputError, ModelError
from xretrieve.media.audio import decode_audio, prepare_waveform

__all__ = ["AudioItem", "Encoder", "ModelSpec", "weights_fingerprint"]

#: What `Encoder.encode_audio` takes: a file path, the file's bytes, or (samples, sample_rate)
#: with samples shaped (frames,) or (frames, channels).
AudioItem = str | os.PathLike[str] | bytes | tuple[npt.ArrayLike, int]

#: The half precisions torch runs under CUDA autocast; fp32 has no entry (no autocast).
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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
        precision: str = "fp32",
    ) -> None:
        if check_precision(precision, str(device)) != "torch":
            raise InputError(
                f"precision {precision} on the CPU runs in OpenVINO, not in this torch encoder: "
                "load the model through load_encoder, or use fp32"
            )
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.audio_tower = audio_tower
        self.precision = precision
        #: The dtype the towers autocast to; None (fp32) runs them untouched.
        self.autocast_dtype: torch.dtype | None = _AUTOCAST_DTYPES.get(precision)

    def tower_context(self) -> contextlib.AbstractContextManager[Any]:
        """The context every tower runs in: autocast to `autocast_dtype`, or none at all (fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _rows(self, out: torch.Tensor) -> npt.NDArray[np.float32]:
        """A tower's output as float32 numpy rows; half-precision rows are made unit again."""
        rows = out.float()
        if self.autocast_dtype is not None:
            # Unit in half precision is ~1e-3 off unit in float32: normalise after the cast.
            rows = torch.nn.functional.normalize(rows, dim=-1)
        return rows.cpu().numpy()

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
        with torch.inference_mode(), self.tower_context():
            for sl in _batches(len(pixels), self.batch_size):
                x = pixels[sl].to(self.device)
                out[sl] = self._rows(self.model.encode_image(x, normalize=True))  # type: ignore[operator]
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
        with torch.inference_mode(), self.tower_context():
            for sl in _batches(len(texts), max(self.batch_size, 256)):
                tokens = self.tokenizer(list(texts[sl])).to(self.device)
                out[sl] = self._rows(self.model.encode_text(tokens, normalize=True))  # type: ignore[operator]
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
        with torch.inference_mode(), self.tower_context():
            for sl in _batches(len(stacked), self.batch_size):
                emb[sl] = self._rows(tower.embed(stacked[sl].to(self.device)))
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
