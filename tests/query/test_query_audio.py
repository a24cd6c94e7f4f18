"""Searching by and for sound: audio terms, audio shards, the CLI --audio option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import xretrieve
from xretrieve.encoders import load_encoder
from xretrieve.errors import ModelMismatchError
from xretrieve.indexer import IndexOptions, index_folder


@pytest.fixture(scope="module")
def sound_index(
    audio_world: Path, audio_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("aidx") / "idx"
    enc = load_encoder(str(audio_model), pretrained=None, device="cpu")
    report = index_folder(
        audio_world / "test", out, encoder=enc, options=IndexOptions(progress=False)
    )
    assert report.audio == len(list((audio_world / "test").glob("*.wav"))) > 0
    return out


def test_audio_to_audio_finds_itself_and_audio_to_image_returns_images(
    sound_index: Path, audio_world: Path
) -> None:
    idx = xretrieve.open_index(sound_index, device="cpu")
    clip = sorted((audio_world / "test").glob("*.wav"))[1]
    same = idx.search(audio=clip, modality="audio", k=3)
    assert same[0].path == clip.name and same[0].score == pytest.approx(1.0, abs=1e-4)
    assert same[0].metadata["duration"] > 0 and same[0].metadata["sample_rate"] == 16_000
    images = idx.search(audio=clip, k=4)
    assert len(images) == 4 and {h.modality for h in images} == {"image"}
    texts_to_audio = idx.search(same[0].caption, modality="audio", k=2)
    assert {h.modality for h in texts_to_audio} == {"audio"}


def test_a_sound_is_a_term_of_a_composed_query(sound_index: Path, audio_world: Path) -> None:
    idx = xretrieve.open_index(sound_index, device="cpu")
    clip = sorted((audio_world / "test").glob("*.wav"))[0]
    alone = idx.query_vector(audio=clip)
    as_path_term = idx.query_vector([clip])  # a path object with an audio extension
    assert float((alone @ as_path_term.T)[0, 0]) == pytest.approx(1.0, abs=1e-5)
    mixed = idx.query_vector(["a large red circle", clip], weights=[1.0, 1.0])
    text = idx.query_vector("a large red circle")
    assert 0.0 < float((mixed @ alone.T)[0, 0]) < 0.9999
    assert 0.0 < float((mixed @ text.T)[0, 0]) < 0.9999


def test_model_without_the_indexes_audio_tower_is_refused(
    sound_index: Path, base_model: Path
) -> None:
    with pytest.raises(ModelMismatchError, match="audio"):
        xretrieve.open_index(sound_index, model=str(base_model), device="cpu")


def test_cli_search_by_sound(sound_index: Path, audio_world: Path, cli) -> None:  # type: ignore[no-untyped-def]
    clip = sorted((audio_world / "test").glob("*.wav"))[2]
    r = cli(
        "search",
        "--audio",
        clip,
        "--index",
        sound_index,
        "--modality",
        "audio",
        "-k",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits[0]["path"] == clip.name and hits[0]["modality"] == "audio"
