"""Audio features: log-mel spectrograms and the windows a clip is cut into.

Features are log-mel spectrograms computed with `torch.stft` and a mel filterbank matrix
(HTK mel scale, triangular filters); `MelConfig` records every parameter, and the audio tower
stores its own `MelConfig`, so training and encoding always compute the same features.
A clip longer than one window is cut into evenly spread windows that cover all of it; the
encoder embeds each window and averages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from xretrieve.errors import InputError
from xretrieve.media.audio import DEFAULT_SAMPLE_RATE, Waveform

__all__ = ["MelConfig", "log_mel", "mel_filterbank", "window_starts", "windows"]


@dataclass(frozen=True)
class MelConfig:
    """Log-mel features and windowing; stored with the audio tower that was trained on them."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    #: Length of one encoder window; longer clips are cut, shorter ones zero-padded.
    window_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise InputError("sample_rate, n_fft, hop_length and n_mels must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise InputError(f"need 0 <= f_min < f_max <= sample_rate/2, got {self}")
        if self.window_seconds * self.sample_rate < self.n_fft:
            raise InputError("window_seconds must hold at least one FFT frame")

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        """Feature frames of one window (centred STFT)."""
        return 1 + self.window_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(cfg: MelConfig) -> npt.NDArray[np.float32]:
    """Triangular HTK-mel filters as a (n_mels, n_fft // 2 + 1) matrix over STFT bins."""
    bins = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array(cfg.f_min)), _hz_to_mel(np.array(cfg.f_max)), cfg.n_mels + 2
        )
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    return fb.astype(np.float32)


def log_mel(waves: torch.Tensor, cfg: MelConfig, filterbank: torch.Tensor) -> torch.Tensor:
    """Log-mel power spectrogram (batch, n_mels, frames) of waveforms (batch, samples)."""
    window = torch.hann_window(cfg.n_fft, device=waves.device, dtype=waves.dtype)
    spec = torch.stft(
        waves,
        cfg.n_fft,
        hop_length=cfg.hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(filterbank.to(waves.dtype), power)
    # A fixed floor (-80 dB re full scale), not one relative to the clip: loudness is a feature.
    return torch.log10(mel.clamp_min(1e-8))


def window_starts(n: int, size: int) -> list[int]:
    """Starts of the fewest `size`-long windows that cover `n` samples, spread evenly."""
    if n <= size:
        return [0]
    count = -(-n // size)
    return [round(s) for s in np.linspace(0, n - size, count)]


def windows(waveform: Waveform, size: int) -> Waveform:
    """Cut a waveform into (w, size) windows covering all of it; a short clip is zero-padded."""
    x = np.asarray(waveform, dtype=np.float32)
    if len(x) <= size:
        out = np.zeros((1, size), dtype=np.float32)
        out[0, : len(x)] = x
        return out
    return np.stack([x[s : s + size] for s in window_starts(len(x), size)])
