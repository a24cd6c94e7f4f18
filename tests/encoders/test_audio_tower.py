"""The audio tower: save/load in the model folder, refusal of damaged towers, encode_audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xretrieve.encoders import Encoder, ModelSpec, load_encoder
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE, AUDIO_WEIGHTS_FILE
from xretrieve.errors import ModelError


def test_encode_audio_inputs_agree_and_are_unit_rows(audio_model: Path, audio_world: Path) -> None:
    enc = load_encoder(str(audio_model), pretrained=None, device="cpu")
    wavs = sorted((audio_world / "test").glob("*.wav"))[:3]
    by_path = enc.encode_audio(wavs)
    assert by_path.shape == (3, enc.dim) and by_path.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(by_path, axis=1), 1.0, atol=1e-5)
    by_bytes = enc.encode_audio([p.read_bytes() for p in wavs])
    samples = [sf.read(p, dtype="float32") for p in wavs]
    by_array = enc.encode_audio([(x, sr) for x, sr in samples])
    np.testing.assert_allclose(by_bytes, by_path, atol=1e-6)
    np.testing.assert_allclose(by_array, by_path, atol=1e-6)
    # Different scenes, different vectors; stereo at another rate still lands near the original.
    assert float(by_path[0] @ by_path[1]) < 0.9999
    x, sr = samples[0]
    import soxr

    stereo = np.stack([x, x], axis=1)
    resampled = enc.encode_audio([(soxr.resample(stereo, sr, 44_100), 44_100)])
    assert float(resampled[0] @ by_path[0]) > 0.99
    assert enc.encode_audio([]).shape == (0, enc.dim)


def test_encode_audio_keeps_order_across_batches_and_names_a_bad_clip(
    audio_model: Path, audio_world: Path, tmp_path: Path
) -> None:
    from xretrieve.errors import MediaError

    enc = load_encoder(str(audio_model), pretrained=None, device="cpu", batch_size=2)
    wavs = sorted((audio_world / "train").glob("*.wav"))[:7]  # 4 batches, decoded in threads
    one_by_one = np.concatenate([enc.encode_audio([w]) for w in wavs])
    np.testing.assert_allclose(enc.encode_audio(wavs), one_by_one, atol=1e-6)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(MediaError, match=r"bad\.wav"):
        enc.encode_audio([*wavs[:5], bad, wavs[5]])


def test_long_clips_average_their_windows(audio_model: Path, audio_world: Path) -> None:
    enc = load_encoder(str(audio_model), pretrained=None, device="cpu", batch_size=2)
    wavs = sorted((audio_world / "train").glob("*.wav"))[:3]
    parts = [sf.read(p, dtype="float32")[0] for p in wavs]
    long = np.concatenate(parts)  # 3 windows exactly
    got = enc.encode_waveforms([long])[0]
    each = enc.encode_waveforms(parts)
    mean = each.sum(axis=0)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), atol=1e-5)
    # A clip 1.5 windows long is covered by two overlapping windows, start and end.
    size = len(parts[0])
    mid = np.concatenate([parts[0], parts[1][: size // 2]])
    two = enc.encode_waveforms([mid[:size], mid[-size:]]).sum(axis=0)
    np.testing.assert_allclose(enc.encode_waveforms([mid])[0], two / np.linalg.norm(two), atol=1e-5)


def test_encoder_without_audio_tower_says_how_to_get_one(tiny_encoder: Encoder) -> None:
    assert "audio" not in tiny_encoder.spec.towers
    with pytest.raises(ModelError, match="train-audio"):
        tiny_encoder.encode_audio([(np.ones(16000, dtype=np.float32), 16000)])


def test_model_spec_reads_dicts_written_before_audio() -> None:
    old = {
        "name": "xr-tiny",
        "pretrained": None,
        "fingerprint": "ab" * 16,
        "dim": 32,
        "image_size": 32,
        "context_length": 16,
    }
    spec = ModelSpec.from_dict(old)
    assert spec.towers == ("image", "text") and spec.audio_fingerprint is None
    new = ModelSpec.from_dict(
        {**old, "towers": ["image", "text", "audio"], "audio_fingerprint": "cd"}
    )
    assert new.towers == ("image", "text", "audio")
    assert ModelSpec.from_dict(json.loads(json.dumps(new.to_dict()))) == new


def test_damaged_or_foreign_audio_tower_is_refused(audio_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(audio_model, folder)
    weights = folder / AUDIO_WEIGHTS_FILE
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    shutil.copy(audio_model / AUDIO_WEIGHTS_FILE, weights)
    meta = json.loads((folder / AUDIO_CONFIG_FILE).read_text())
    meta["trained_against"] = "0" * 32
    (folder / AUDIO_CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="other image/text weights"):
        load_encoder(str(folder), pretrained=None, device="cpu")
