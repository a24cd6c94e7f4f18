"""Indexing sound: audio shards with their facts, bad clips reported, models without a tower."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xretrieve import store
from xretrieve.encoders import load_encoder
from xretrieve.errors import ModelMismatchError
from xretrieve.indexer import IndexOptions, index_folder

OPTS = IndexOptions(progress=False, batch_size=8)


@pytest.fixture()
def sound_dir(audio_world: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "media"
    shutil.copytree(audio_world / "test", dst)
    rate = 22_050
    t = np.arange(rate, dtype=np.float32) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1) * 0.3
    sf.write(dst / "tone.flac", stereo, rate)
    sf.write(dst / "silent.wav", np.zeros(rate, np.float32), rate)
    (dst / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (dst / "empty.mp3").write_bytes(b"")
    return dst


def test_audio_is_indexed_with_its_facts(
    sound_dir: Path, audio_model: Path, tmp_path: Path
) -> None:
    enc = load_encoder(str(audio_model), pretrained=None, device="cpu")
    n_wav = len(list(sound_dir.glob("*.wav"))) - 2  # silent + broken fail
    report = index_folder(sound_dir, tmp_path / "idx", encoder=enc, options=OPTS)
    assert report.audio == n_wav + 1  # the world's clips and tone.flac
    assert report.images == len(list(sound_dir.glob("*.png")))
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert set(reasons) == {"silent.wav", "broken.wav", "empty.mp3"}
    assert "silent" in reasons["silent.wav"] and "empty" in reasons["empty.mp3"]
    m = store.read_manifest(tmp_path / "idx")
    assert m.rows_by_modality()["audio"] == n_wav + 1
    assert m.model["audio_fingerprint"] == enc.spec.audio_fingerprint
    audio = next(s for s in m.shards if s.modality == "audio")
    meta = store.load_shard(tmp_path / "idx", audio).metadata
    tone = meta.filter(
        meta.column("path").to_numpy(zero_copy_only=False) == "tone.flac"
    ).to_pylist()[0]
    assert (tone["sample_rate"], tone["channels"]) == (22_050, 2)
    assert tone["duration"] == pytest.approx(1.0, abs=1e-3) and tone["width"] is None
    clip = meta.filter(
        meta.column("path").to_numpy(zero_copy_only=False) != "tone.flac"
    ).to_pylist()[0]
    assert clip["caption"]  # the sidecar that describes the scene describes its sound too
    assert audio.partition["stats"]["duration"]["max"] >= 1.0

    again = index_folder(sound_dir, tmp_path / "idx", encoder=enc, options=OPTS)
    assert again.encoded == 0 and again.unchanged == again.images + again.texts + again.audio


def test_model_without_audio_tower_skips_audio_with_one_note(
    sound_dir: Path, base_model: Path, tmp_path: Path
) -> None:
    enc = load_encoder(str(base_model), pretrained=None, device="cpu")
    report = index_folder(sound_dir, tmp_path / "idx", encoder=enc, options=OPTS)
    assert report.audio == 0 and report.images > 0
    notes = [p.reason for p in report.problems if "audio tower" in p.reason]
    assert len(notes) == 1 and "train-audio" in notes[0]
    assert "audio" not in store.read_manifest(tmp_path / "idx").rows_by_modality()


def test_other_audio_tower_is_refused(sound_dir: Path, audio_model: Path, tmp_path: Path) -> None:
    enc = load_encoder(str(audio_model), pretrained=None, device="cpu")
    index_folder(sound_dir, tmp_path / "idx", encoder=enc, options=OPTS)
    other = type(enc.spec)(**{**enc.spec.to_dict(), "audio_fingerprint": "another-tower"})
    enc.spec = other
    with pytest.raises(ModelMismatchError, match="audio"):
        index_folder(sound_dir, tmp_path / "idx", encoder=enc, options=OPTS)
