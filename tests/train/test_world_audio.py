"""The world's sound: each concept audible where it should be, files beside images, deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from xretrieve.errors import FolderError, InputError
from xretrieve.media.audio import decode_audio
from xretrieve.train.world import SceneObject, load_labels, make_world
from xretrieve.train.world_audio import (
    CLIP_SECONDS,
    PITCHES,
    SLOT_SECONDS,
    add_audio_to_world,
    parse_concept,
    synthesize_scene,
)

RATE = 16_000


def _slot_rms(x: np.ndarray) -> np.ndarray:
    slot = round(SLOT_SECONDS * RATE)
    return np.sqrt((x.reshape(-1, slot).astype(np.float64) ** 2).mean(axis=1))


def _f0(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 16))
    return float(np.fft.rfftfreq(1 << 16, 1 / RATE)[spec.argmax()])


def _obj(shape: str = "circle", colour: str = "red", size: str = "large", pos: str = "top-left"):
    return SceneObject(shape=shape, colour=colour, size=size, position=pos)


def test_each_colour_sounds_at_its_pitch_in_its_slot() -> None:
    slot = round(SLOT_SECONDS * RATE)
    for i, (colour, hz) in enumerate(PITCHES.items()):
        pos = ("top-left", "top-right", "bottom-left", "bottom-right")[i % 4]
        x = synthesize_scene([_obj(colour=colour, pos=pos)], np.random.default_rng(i))
        assert x.shape == (round(CLIP_SECONDS * RATE),) and x.dtype == np.float32
        rms = _slot_rms(x)
        assert int(rms.argmax()) == i % 4
        assert rms.max() > 30 * np.delete(rms, i % 4).max()  # the other slots are noise floor
        k = i % 4
        assert _f0(x[k * slot : (k + 1) * slot]) == pytest.approx(hz, rel=0.02)


def test_two_objects_sound_in_both_slots_and_size_sets_length_and_level() -> None:
    x = synthesize_scene(
        [_obj(size="large", pos="top-right"), _obj(size="small", pos="bottom-right")],
        np.random.default_rng(0),
    )
    rms = _slot_rms(x)
    assert rms[1] > 2 * rms[3] > 0 and rms[3] > 30 * max(rms[0], rms[2])
    slot = round(SLOT_SECONDS * RATE)
    env = np.abs(x.reshape(-1, slot))

    def length(row: np.ndarray) -> float:
        on = np.flatnonzero(row > 0.05 * row.max())
        return float(on[-1] - on[0]) / RATE

    large_len, small_len = length(env[1]), length(env[3])
    assert large_len > 0.3 and small_len < 0.22


def test_shapes_differ_in_timbre() -> None:
    # Same pitch, same slot: the spectra's harmonic content tells the shapes apart.
    spectra = {}
    for shape in ("circle", "square", "triangle", "star", "cross", "heart"):
        x = synthesize_scene([_obj(shape=shape)], np.random.default_rng(1))[:8000]
        s = np.abs(np.fft.rfft(x, n=1 << 14))
        spectra[shape] = s / np.linalg.norm(s)
    names = list(spectra)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert float(spectra[a] @ spectra[b]) < 0.95, (a, b)


def test_synthesis_is_deterministic_per_generator() -> None:
    objs = [_obj(), _obj(shape="star", colour="blue", pos="bottom-left")]
    a = synthesize_scene(objs, np.random.default_rng(5))
    b = synthesize_scene(objs, np.random.default_rng(5))
    c = synthesize_scene(objs, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_parse_concept_round_trips_and_refuses_junk() -> None:
    obj = _obj(shape="heart", colour="purple", size="small", pos="bottom-left")
    assert parse_concept(obj.concept) == obj
    with pytest.raises(InputError):
        parse_concept("a red circle")
    with pytest.raises(InputError):
        parse_concept("huge red circle top-left")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.wav"))
    }


def test_add_audio_to_world_writes_a_sound_beside_every_image(tmp_path: Path) -> None:
    root = tmp_path / "w"
    make_world(root, n=12, seed=3, image_size=32)
    info = add_audio_to_world(root, seed=1)
    labels = load_labels(root)
    assert info.n_clips == len(labels) == 12
    splits = set()
    for rel, lab in labels.items():
        wav = (root / rel).with_suffix(".wav")
        got = decode_audio(wav)
        assert got.duration == pytest.approx(CLIP_SECONDS) and got.channels == 1
        # One loud slot per object: the sound carries the scene's object count and positions.
        rms = _slot_rms(got.waveform)
        loud = {i for i, v in enumerate(rms) if v > 5 * rms.min()}
        slots = ("top-left", "top-right", "bottom-left", "bottom-right")
        assert loud == {slots.index(parse_concept(c).position) for c in lab.concepts}
        splits.add(lab.split)
    assert splits == {"train", "test"}
    meta = json.loads((root / "audio.json").read_text())
    assert meta["n_clips"] == 12 and meta["sample_rate"] == RATE
    first = _digest(root)
    add_audio_to_world(root, seed=1, workers=2)
    assert _digest(root) == first  # same arguments, same bytes, whatever the worker count
    add_audio_to_world(root, seed=2)
    assert _digest(root) != first


def test_add_audio_needs_a_world(tmp_path: Path) -> None:
    with pytest.raises(FolderError):
        add_audio_to_world(tmp_path)
    with pytest.raises(InputError):
        add_audio_to_world(tmp_path, sample_rate=4000)
