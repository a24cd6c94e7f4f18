"""The CLAP adapter as an audio tower: loading, its checks, encoding and indexing sound.

No weights are downloaded: `tiny_clap` is a random-initialised CLAP checkpoint built locally
(`clap_checkpoint.build_tiny_clap`), mapped into a model folder's space by `add_clap`
(`xretrieve.train.clap_fit`). Its vectors mean nothing, so these tests check mechanics.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from clap_checkpoint import build_tiny_clap, world_words

import xretrieve
from xretrieve import store
from xretrieve.encoders import load_encoder
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE
from xretrieve.encoders.clap import CLAP_MAP_FILE, load_clap
from xretrieve.errors import ModelError
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.train.clap_fit import ClapReport, add_clap


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_adapter_loads_as_the_audio_tower_and_embeds_sound(
    clap_model: tuple[Path, ClapReport], base_model: Path, audio_world: Path
) -> None:
    folder, report = clap_model
    added = set(_digests(folder)) - set(_digests(base_model))
    assert added == {AUDIO_CONFIG_FILE, CLAP_MAP_FILE}
    base_files = _digests(base_model)
    assert {k: v for k, v in _digests(folder).items() if k in base_files} == base_files
    meta = json.loads((folder / AUDIO_CONFIG_FILE).read_text())
    enc = load_encoder(str(folder), pretrained=None, device="cpu", batch_size=4)
    assert meta["kind"] == "clap" and meta["trained_against"] == enc.spec.fingerprint
    assert meta["fit"]["n_sentences"] == report.fit.n_sentences
    assert enc.spec.towers == ("image", "text", "audio")
    assert enc.spec.audio_fingerprint == report.fingerprint == meta["fingerprint"]
    assert enc.audio_sample_rate == 48_000
    wavs = sorted((audio_world / "test").glob("*.wav"))[:3]
    vecs = enc.encode_audio(wavs)
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_audio(wavs), vecs, atol=1e-6)  # deterministic
    assert float(vecs[0] @ vecs[1]) < 0.9999
    # A short clip is repeated to fill CLAP's 10 s window, not padded with silence.
    tower = enc.audio_tower
    assert tower is not None
    cut = tower.windows(np.ones(4 * 48_000, np.float32))
    assert cut.shape == (1, 480_000) and cut[0, -1] == 0.0 and cut[0, 4 * 48_000 + 5] == 1.0


def test_indexing_puts_sounds_in_audio_shards_and_search_finds_them(
    clap_model: tuple[Path, ClapReport], audio_world: Path, tmp_path: Path
) -> None:
    folder, report = clap_model
    media = tmp_path / "media"
    shutil.copytree(audio_world / "test", media)
    enc = load_encoder(str(folder), pretrained=None, device="cpu", batch_size=8)
    n_wav = len(list(media.glob("*.wav")))
    got = index_folder(media, tmp_path / "idx", encoder=enc, options=IndexOptions(progress=False))
    assert got.audio == n_wav > 0
    manifest = store.read_manifest(tmp_path / "idx")
    assert manifest.rows_by_modality()["audio"] == n_wav
    assert manifest.model["audio_fingerprint"] == report.fingerprint
    idx = xretrieve.open_index(tmp_path / "idx", device="cpu")
    clip = sorted(media.glob("*.wav"))[1]
    same = idx.search(audio=clip, modality="audio", k=3)
    assert same[0].path == clip.name and same[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(idx.search(audio=clip, k=4)) == 4
    assert {h.modality for h in idx.search("a large red circle", modality="audio", k=2)} == {
        "audio"
    }


def test_missing_transformers_says_how_to_install(
    clap_model: tuple[Path, ClapReport], tiny_clap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ModelError, match=re.escape("pip install -e '.[clap]'")):
        load_clap(tiny_clap)
    with pytest.raises(ModelError, match=re.escape("pip install -e '.[clap]'")):
        load_encoder(str(clap_model[0]), pretrained=None, device="cpu")


def test_changed_base_map_or_clap_folder_is_refused(
    clap_model: tuple[Path, ClapReport], tiny_clap: Path, audio_world: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(clap_model[0], folder)
    cfg = folder / AUDIO_CONFIG_FILE
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "trained_against": "0" * 32}))
    with pytest.raises(ModelError, match="other image/text weights"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    cfg.write_text(json.dumps(meta))
    blob = bytearray((folder / CLAP_MAP_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (folder / CLAP_MAP_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    shutil.copy(clap_model[0] / CLAP_MAP_FILE, folder / CLAP_MAP_FILE)
    other = build_tiny_clap(tmp_path / "other", world_words(audio_world), seed=1)
    cfg.write_text(json.dumps({**meta, "clap_dir": str(other)}))
    with pytest.raises(ModelError, match="changed since"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    cfg.write_text(json.dumps({**meta, "clap_dir": str(tmp_path / "gone")}))
    with pytest.raises(ModelError, match="is gone"):
        load_encoder(str(folder), pretrained=None, device="cpu")
    # add-clap repairs the folder even though its current adapter cannot load.
    add_clap(folder, tiny_clap, world=audio_world)
    assert "audio" in load_encoder(str(folder), pretrained=None, device="cpu").spec.towers
