"""The synthetic world: deterministic bytes, layout, and a caption grammar that matches labels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xretrieve.errors import FolderError, InputError
from xretrieve.train.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    concept_key,
    load_labels,
    make_world,
)

N = 240
SEED = 7


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world") / "w"
    make_world(root, n=N, seed=SEED, image_size=48, test_fraction=0.25)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_arguments_give_identical_bytes(world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_world(again, n=N, seed=SEED, image_size=48, test_fraction=0.25, workers=2)
    assert _digest(again) == _digest(world)


def test_another_seed_gives_other_images(world: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_world(other, n=N, seed=SEED + 1, image_size=48, test_fraction=0.25)
    a, b = _digest(world), _digest(other)
    assert sum(a[k] == b.get(k) for k in a if k.endswith(".png")) == 0


def test_counts_and_splits(world: Path) -> None:
    meta = json.loads((world / "world.json").read_text())
    assert meta["format"] == 1
    assert (meta["n"], meta["seed"], meta["image_size"]) == (N, SEED, 48)
    assert meta["n_test"] == 60 and meta["n_train"] == 180
    assert len(list((world / "train").glob("*.png"))) == 180
    assert len(list((world / "test").glob("*.png"))) == 60
    labels = load_labels(world)
    assert len(labels) == N
    assert sum(lab.split == "test" for lab in labels.values()) == 60


def test_every_image_has_a_sidecar_and_a_label(world: Path) -> None:
    labels = load_labels(world)
    for png in sorted(world.rglob("*.png")):
        rel = png.relative_to(world).as_posix()
        assert rel in labels
        lines = png.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
        assert lines == list(labels[rel].captions)
        assert len(lines) == (1 if labels[rel].split == "test" else 3)
        with Image.open(png) as im:
            assert im.size == (48, 48) and im.mode == "RGB"


_SIZE_WORDS = {"small": {"small", "little"}, "large": {"large", "big"}}
_VERTICAL = {"top": {"top", "upper"}, "bottom": {"bottom", "lower"}}


def _mentions(caption: str, concept: str) -> bool:
    """True when one 'and'-separated part of the caption states every attribute of concept."""
    size, colour, shape, position = concept.split()
    vertical, horizontal = position.split("-")
    for part in caption.split(" and "):
        words = set(re.findall(r"[a-z]+", part))
        if (
            words & _SIZE_WORDS[size]
            and colour in words
            and shape in words
            and words & _VERTICAL[vertical]
            and horizontal in words
        ):
            return True
    return False


def test_captions_state_every_object_attribute(world: Path) -> None:
    for lab in load_labels(world).values():
        assert lab.concepts == tuple(sorted(lab.concepts))
        for caption in lab.captions:
            assert caption.count(" and ") == len(lab.concepts) - 1
            for concept in lab.concepts:
                assert _mentions(caption, concept), (caption, concept)


def test_captions_use_several_templates(world: Path) -> None:
    starts = {c.split()[0] for lab in load_labels(world).values() for c in lab.captions}
    assert len(starts) >= 3


def test_vocabularies_are_all_used(world: Path) -> None:
    used = [c.split() for lab in load_labels(world).values() for c in lab.concepts]
    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(SIZES) >= 2 and len(POSITIONS) >= 4
    assert {u[0] for u in used} == set(SIZES)
    assert {u[1] for u in used} == set(COLOURS)
    assert {u[2] for u in used} == set(SHAPES)
    assert {u[3] for u in used} == set(POSITIONS)


def test_two_object_scenes_use_two_quadrants(world: Path) -> None:
    counts = {1: 0, 2: 0}
    for lab in load_labels(world).values():
        counts[len(lab.concepts)] += 1
        positions = [c.split()[3] for c in lab.concepts]
        assert len(set(positions)) == len(positions)
    assert counts[1] > N // 4 and counts[2] > N // 4


def test_objects_are_drawn_where_labels_say(world: Path) -> None:
    # An object is saturated colour on a low-saturation backdrop: find it per quadrant.
    labels = load_labels(world)
    checked = 0
    for lab in list(labels.values())[:60]:
        with Image.open(world / lab.path) as im:
            rgb = np.asarray(im, dtype=np.float32)
        sat = rgb.max(axis=2) - rgb.min(axis=2)
        h = rgb.shape[0] // 2
        quads = {
            "top-left": sat[:h, :h],
            "top-right": sat[:h, h:],
            "bottom-left": sat[h:, :h],
            "bottom-right": sat[h:, h:],
        }
        occupied = {q for q, s in quads.items() if (s > 90).sum() >= 4}
        assert occupied == {c.split()[3] for c in lab.concepts}, lab
        checked += 1
    assert checked == 60


def test_concept_key_ignores_order(world: Path) -> None:
    lab = next(lab for lab in load_labels(world).values() if len(lab.concepts) == 2)
    flipped = type(lab)(lab.path, lab.split, lab.concepts[::-1], lab.captions)
    assert concept_key(flipped) == concept_key(lab)


def test_refuses_a_non_empty_folder(world: Path) -> None:
    with pytest.raises(FolderError):
        make_world(world, n=4, seed=0)


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"n": 4, "image_size": 8}, {"n": 4, "test_fraction": 1.0}]
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        make_world(tmp_path / "w", seed=0, **kwargs)  # type: ignore[arg-type]


def test_load_labels_needs_a_world(tmp_path: Path) -> None:
    with pytest.raises(FolderError):
        load_labels(tmp_path)


def test_ten_thousand_images_are_quick(tmp_path: Path) -> None:
    import time

    # CPU time, not wall time: a busy machine must not fail this test.
    t0 = time.process_time()
    info = make_world(tmp_path / "big", n=1000, seed=1)
    per_image = (time.process_time() - t0) / info.n
    # 10,000 images take about 12 s of one core.
    assert per_image * 10_000 < 40.0
