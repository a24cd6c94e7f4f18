"""Audio front end: decode a file into one mono waveform at one rate, cut it into windows, log-mel.

Decoding goes through libsndfile (`soundfile`): WAV, FLAC, OGG/Vorbis and MP3. Channels are
averaged to mono and the result is resampled (`soxr`) to the model's rate. Files that cannot
give a usable waveform raise `MediaError(path, reason)` -- empty, corrupt, unsupported,
silent or too short -- so the indexer can report and skip them as it does bad images.

Features are log-mel spectrograms computed with `torch.stft` and a mel filterbank matrix
(HTK mel scale, triangular filters); `MelConfig` records every parameter, and the audio tower
stores its own `MelConfig`, so training and encoding always compute the same features.
A clip longer than one window is cut into evenly spread windows that cover all of it; the
encoder embeds each window and averages.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import torch

from xretrieve.errors import InputError, MediaError

__all__ = [
    "AUDIO_EXTS",
    "DEFAULT_SAMPLE_RATE",
    "MIN_SECONDS",
    "SILENCE_PEAK",
    "AudioSource",
    "DecodedAudio",
    "MelConfig",
    "decode_audio",
    "log_mel",
    "mel_filterbank",
    "prepare_waveform",
    "window_starts",
    "windows",
]

#: File extensions `decode_audio` reads (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF).
AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
DEFAULT_SAMPLE_RATE = 16_000
#: Clips shorter than this (after decoding) carry too little to embed.
MIN_SECONDS = 0.1
#: A clip whose absolute peak stays below this (about -70 dBFS, 10 steps of 16-bit PCM) is silent.
SILENCE_PEAK = 10 ** (-70 / 20)
#: Only the first this many seconds of a long file are decoded (duration still reports all).
MAX_SECONDS = 600.0

Waveform = npt.NDArray[np.float32]
AudioSource = str | os.PathLike[str] | bytes | IO[bytes]


@dataclass(frozen=True)
class DecodedAudio:
    """A mono float32 waveform at `sample_rate`, with the source file's facts."""

    waveform: Waveform
    sample_rate: int
    duration: float
    channels: int
    source_rate: int
    format: str

    def facts(self) -> dict[str, Any]:
        """Metadata for an index row: duration (s), the file's sample rate and channels."""
        return {
            "duration": round(self.duration, 3),
            "sample_rate": self.source_rate,
            "channels": self.channels,
            "format": self.format,
        }


def _label(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "<bytes>" if isinstance(source, bytes) else getattr(source, "name", "<stream>")


def decode_audio(
    source: AudioSource,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float | None = MAX_SECONDS,
) -> DecodedAudio:
    """Decode a file, bytes or binary stream into mono float32 at `sample_rate`."""
    import soundfile as sf

    label = _label(source)
    stream: Any = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() not in AUDIO_EXTS:
            raise MediaError(
                label,
                f"unsupported audio format {path.suffix or '(no extension)'!r} "
                f"(supported: {', '.join(sorted(AUDIO_EXTS))})",
            )
        try:
            if path.stat().st_size == 0:
                raise MediaError(label, "empty file (0 bytes)")
        except OSError as e:
            raise MediaError(label, f"cannot read file ({e.strerror or e})") from e
    elif isinstance(source, bytes):
        if not source:
            raise MediaError(label, "empty file (0 bytes)")
        stream = io.BytesIO(source)
    try:
        with sf.SoundFile(stream) as f:
            rate, channels, fmt = int(f.samplerate), int(f.channels), str(f.format)
            total = int(f.frames)
            limit = -1 if max_seconds is None else int(max_seconds * rate)
            data = f.read(
                frames=limit if 0 <= limit < total else -1, dtype="float32", always_2d=True
            )
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MediaError(label, f"cannot decode audio ({reason})") from e
    except OSError as e:
        raise MediaError(label, f"cannot read file ({e.strerror or e})") from e
    # Some decoders report no frame count up front; the samples read are the truth then.
    duration = max(total, len(data)) / rate if rate > 0 else 0.0
    wave = prepare_waveform(
        data, rate, sample_rate=sample_rate, min_seconds=min_seconds, label=label
    )
    return DecodedAudio(
        waveform=wave,
        sample_rate=sample_rate,
        duration=duration,
        channels=channels,
        source_rate=rate,
        format=fmt,
    )


def prepare_waveform(
    waveform: npt.ArrayLike,
    rate: int,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
    label: str = "<waveform>",
) -> Waveform:
    """Mono float32 at `sample_rate` from samples shaped (frames,) or (frames, channels)."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if x.ndim != 1:
        raise InputError(
            f"{label}: a waveform must be (frames,) or (frames, channels), got shape {x.shape}"
        )
    if rate <= 0:
        raise MediaError(label, f"invalid sample rate {rate}")
    if not np.isfinite(x).all():
        raise MediaError(label, "corrupt audio: samples are not finite numbers")
    if len(x) < min_seconds * rate:
        raise MediaError(
            label, f"too short: {len(x) / rate:.3f} s (at least {min_seconds:g} s is needed)"
        )
    if float(np.abs(x).max()) < SILENCE_PEAK:
        raise MediaError(label, "silent: no sample rises above -70 dBFS")
    if rate != sample_rate:
        import soxr

        x = soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x, dtype=np.float32)


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
