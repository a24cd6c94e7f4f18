"""Audio front end: decoding every format, refusing every bad file, windows and log-mel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from xretrieve.encoders.features import MelConfig, log_mel, mel_filterbank, window_starts, windows
from xretrieve.errors import InputError, MediaError
from xretrieve.media.audio import AUDIO_EXTS, decode_audio, prepare_waveform

FORMATS = [
    ("wav", "WAV", "PCM_16"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


def _stereo(seconds: float = 1.0, rate: int = 44_100) -> np.ndarray:
    """440 Hz on the left, 880 Hz on the right, both at half scale."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 880 * t)], axis=1) * 0.4


def _peak_hz(x: np.ndarray, rate: int, top: int = 2) -> list[float]:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    # Strongest bins, one per peak (neighbours of a peak are dropped).
    found: list[float] = []
    for i in np.argsort(spec)[::-1]:
        if all(abs(freqs[i] - f) > 20 for f in found):
            found.append(float(freqs[i]))
        if len(found) == top:
            break
    return sorted(found)


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
def test_decode_each_format_to_mono_16k(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _stereo(), 44_100, format=fmt, subtype=subtype)
    got = decode_audio(path)
    assert (got.sample_rate, got.channels, got.source_rate) == (16_000, 2, 44_100)
    assert got.format == fmt
    assert got.waveform.dtype == np.float32 and got.waveform.ndim == 1
    # Lossy codecs pad a little; the length is the duration at the new rate.
    assert got.duration == pytest.approx(1.0, abs=0.06)
    assert len(got.waveform) == pytest.approx(16_000, abs=1000)
    # Mono mix of both channels: both tones survive at about half their level.
    assert _peak_hz(got.waveform, 16_000) == pytest.approx([440, 880], abs=3)
    assert 0.25 < float(np.abs(got.waveform).max()) < 0.5
    assert got.facts() == {
        "duration": got.duration.__round__(3),
        "sample_rate": 44_100,
        "channels": 2,
        "format": fmt,
    }


def test_decode_lossless_matches_the_mono_mix(tmp_path: Path) -> None:
    x = _stereo(0.5, 16_000)
    sf.write(tmp_path / "a.flac", x, 16_000, subtype="PCM_24")
    got = decode_audio(tmp_path / "a.flac")
    np.testing.assert_allclose(got.waveform, x.mean(axis=1), atol=1e-6)


def test_decode_bytes_and_streams(tmp_path: Path) -> None:
    buf = io.BytesIO()
    sf.write(buf, _stereo(0.5, 22_050), 22_050, format="FLAC")
    data = buf.getvalue()
    a = decode_audio(data)
    b = decode_audio(io.BytesIO(data))
    assert a.source_rate == 22_050 and len(a.waveform) == 8000
    np.testing.assert_array_equal(a.waveform, b.waveform)


def test_max_seconds_reads_only_the_start_but_reports_the_whole_duration(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.wav", _stereo(3.0, 16_000), 16_000)
    got = decode_audio(tmp_path / "long.wav", max_seconds=1.0)
    assert len(got.waveform) == 16_000
    assert got.duration == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("zero.wav", b"", "empty file"),
        ("corrupt.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4, "cannot decode"),
        ("noise.mp3", np.random.default_rng(0).bytes(4096), "cannot decode"),
        ("notes.xyz", b"hello", "unsupported audio format"),
        ("noext", b"hello", "unsupported audio format"),
    ],
)
def test_bad_files_raise_media_error(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MediaError) as info:
        decode_audio(path)
    assert reason in info.value.reason
    assert info.value.path == str(path)


def test_missing_file_is_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot read"):
        decode_audio(tmp_path / "gone.wav")


def test_silent_and_too_short_clips_are_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "silent.wav", np.zeros(16_000), 16_000)
    with pytest.raises(MediaError, match="silent"):
        decode_audio(tmp_path / "silent.wav")
    # Dither-level noise (below -70 dBFS) is still silence.
    sf.write(tmp_path / "hiss.wav", np.full(16_000, 1e-4), 16_000, subtype="FLOAT")
    with pytest.raises(MediaError, match="silent"):
        decode_audio(tmp_path / "hiss.wav")
    sf.write(tmp_path / "blip.wav", np.full(800, 0.5), 16_000)  # 50 ms
    with pytest.raises(MediaError, match="too short"):
        decode_audio(tmp_path / "blip.wav")
    assert len(decode_audio(tmp_path / "blip.wav", min_seconds=0.01).waveform) == 800


def test_non_finite_samples_are_corrupt(tmp_path: Path) -> None:
    x = np.full(16_000, 0.1, dtype=np.float32)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16_000, subtype="FLOAT")
    with pytest.raises(MediaError, match="not finite"):
        decode_audio(tmp_path / "nan.wav")


def test_prepare_waveform_mixes_and_resamples() -> None:
    x = _stereo(1.0, 48_000).astype(np.float32)
    y = prepare_waveform(x, 48_000, sample_rate=16_000)
    assert y.shape == (16_000,) and y.dtype == np.float32
    assert _peak_hz(y, 16_000) == pytest.approx([440, 880], abs=3)
    with pytest.raises(InputError, match="frames"):
        prepare_waveform(np.zeros((2, 2, 2)), 16_000)


def test_audio_exts_cover_the_formats_libsndfile_reads() -> None:
    assert {".wav", ".flac", ".ogg", ".mp3"} <= AUDIO_EXTS
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTS)


def test_windows_cover_a_long_clip_evenly() -> None:
    assert window_starts(100, 100) == [0]
    assert window_starts(50, 100) == [0]
    assert window_starts(250, 100) == [0, 75, 150]
    x = np.arange(250, dtype=np.float32)
    w = windows(x, 100)
    assert w.shape == (3, 100)
    assert w[0, 0] == 0 and w[-1, -1] == 249  # first and last samples are in
    np.testing.assert_array_equal(w[1], x[75:175])
    short = windows(np.ones(30, dtype=np.float32), 100)
    assert short.shape == (1, 100) and short.sum() == 30  # zero-padded


def test_mel_filterbank_is_triangular_on_the_mel_scale() -> None:
    cfg = MelConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    assert fb.min() >= 0 and fb.max() <= 1
    centres = fb.argmax(axis=1)
    assert (np.diff(centres) >= 0).all()  # filters rise with frequency
    # Higher filters are wider (mel scale): count of non-zero bins grows.
    widths = (fb > 0).sum(axis=1)
    assert widths[-1] > 4 * widths[5]


def test_log_mel_puts_a_tone_in_its_band() -> None:
    cfg = MelConfig()
    fb = torch.from_numpy(mel_filterbank(cfg))
    t = torch.arange(cfg.window_samples) / cfg.sample_rate
    loud = 0.5 * torch.sin(2 * torch.pi * 1000 * t)
    mel = log_mel(torch.stack([loud, loud * 0.1]), cfg, fb)
    assert mel.shape == (2, cfg.n_mels, cfg.frames)
    band = int(mel[0].mean(dim=1).argmax())
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    centre_hz = bins[mel_filterbank(cfg)[band].argmax()]
    assert abs(centre_hz - 1000) < 80
    # 20 dB quieter is 2 log10 units lower: loudness is kept, not normalised away.
    diff = float((mel[0, band] - mel[1, band]).median())
    assert diff == pytest.approx(2.0, abs=0.05)


def test_mel_config_rejects_impossible_settings() -> None:
    with pytest.raises(InputError):
        MelConfig(f_max=9000.0)
    with pytest.raises(InputError):
        MelConfig(window_seconds=0.01)
    assert MelConfig.from_dict(MelConfig(n_mels=32).to_dict()) == MelConfig(n_mels=32)
