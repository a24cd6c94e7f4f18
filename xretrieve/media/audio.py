"""Audio decoding: a file, bytes or stream into one mono float32 waveform at one rate.

Decoding goes through libsndfile (`soundfile`): WAV, FLAC, OGG/Vorbis and MP3. Channels are
averaged to mono and the result is resampled (`soxr`) to the model's rate. Files that cannot
give a usable waveform raise `MediaError(path, reason)` -- empty, corrupt, unsupported,
silent or too short -- so the indexer can report and skip them as it does bad images.

Features (log-mel, windows) are the encoders' business: `xretrieve.encoders.features`.
This module needs no torch, so scanning and decoding never load it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from xretrieve.errors import InputError, MediaError
from xretrieve.media.files import check_regular_file

__all__ = [
    "AUDIO_EXTS",
    "DEFAULT_SAMPLE_RATE",
    "MIN_SECONDS",
    "SILENCE_PEAK",
    "AudioSource",
    "DecodedAudio",
    "Waveform",
    "decode_audio",
    "prepare_waveform",
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
#: Audio files above this size are refused before decoding (10 min of 32-bit 8-channel 96 kHz).
MAX_AUDIO_FILE_BYTES = 2 << 30

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
        check_regular_file(path, max_bytes=MAX_AUDIO_FILE_BYTES)
        if path.stat().st_size == 0:
            raise MediaError(label, "empty file (0 bytes)")
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
