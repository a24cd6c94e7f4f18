"""Recall@K and its chance level on hand-built matrices with known answers."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xretrieve.errors import InputError
from xretrieve.train.evaluate import (
    EvalReport,
    chance_recall_at_k,
    evaluate_world,
    recall_at_k,
    relevance_matrix,
)

# 3 queries x 5 gallery items.
SIM = np.array(
    [
        [0.9, 0.1, 0.2, 0.3, 0.4],  # relevant item 0 ranks 1st
        [0.9, 0.8, 0.7, 0.6, 0.1],  # relevant item 4 ranks 5th
        [0.1, 0.2, 0.9, 0.8, 0.3],  # relevant items 1 and 3: best ranks 2nd
    ],
    dtype=np.float32,
)
REL = np.array(
    [
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 1, 0, 1, 0],
    ],
    dtype=bool,
)


def test_recall_counts_a_hit_when_any_relevant_item_is_in_the_top_k() -> None:
    got = recall_at_k(SIM, REL, ks=(1, 2, 4, 5, 10))
    assert got == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 4: 2 / 3 * 1, 5: 1.0, 10: 1.0}


def test_recall_with_a_perfect_and_a_reversed_ranking() -> None:
    rel = np.eye(6, dtype=bool)
    assert recall_at_k(np.eye(6, dtype=np.float32), rel, ks=(1,)) == {1: 1.0}
    assert recall_at_k(-np.eye(6, dtype=np.float32), rel, ks=(1, 5, 6)) == {1: 0.0, 5: 0.0, 6: 1.0}


def test_recall_ranks_nan_last() -> None:
    sim = np.array([[np.nan, 0.0, -1.0]], dtype=np.float32)
    rel = np.array([[True, False, False]])
    assert recall_at_k(sim, rel, ks=(1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_queries_without_relevant_items_are_left_out() -> None:
    rel = REL.copy()
    rel[1] = False
    assert recall_at_k(SIM, rel, ks=(1,)) == {1: 0.5}
    assert chance_recall_at_k(rel, ks=(1,)) == {1: pytest.approx((1 / 5 + 2 / 5) / 2)}


def test_chance_matches_the_closed_form() -> None:
    # g=5; r=1 -> K/5; r=2 -> 1 - C(3,K)/C(5,K).
    got = chance_recall_at_k(REL, ks=(1, 2, 3, 4, 10))
    for k in (1, 2, 3, 4):
        r1 = k / 5
        r2 = 1 - math.comb(3, k) / math.comb(5, k)
        assert got[k] == pytest.approx((2 * r1 + r2) / 3)
    assert got[10] == 1.0


def test_chance_agrees_with_random_rankings() -> None:
    rng = np.random.default_rng(0)
    rel = rng.random((40, 30)) < 0.08
    rel[:, 0] |= ~rel.any(axis=1)
    trials = [recall_at_k(rng.random((40, 30)), rel, ks=(1, 5)) for _ in range(400)]
    expected = chance_recall_at_k(rel, ks=(1, 5))
    for k in (1, 5):
        assert np.mean([t[k] for t in trials]) == pytest.approx(expected[k], abs=0.02)


def test_relevance_matrix_compares_keys() -> None:
    got = relevance_matrix(
        [frozenset({"a"}), frozenset({"a", "b"})],
        [frozenset({"b", "a"}), frozenset({"a"}), frozenset()],
    )
    assert got.tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize(
    ("sim", "rel", "ks"),
    [
        (SIM, REL[:2], (1,)),
        (SIM[0], REL[0], (1,)),
        (SIM, REL, (0,)),
        (SIM, np.zeros_like(REL), (1,)),
    ],
)
def test_bad_input_raises(sim: np.ndarray, rel: np.ndarray, ks: tuple[int, ...]) -> None:
    with pytest.raises(InputError):
        recall_at_k(sim, rel, ks)


def test_report_table_and_dict() -> None:
    report = EvalReport(
        split="test",
        n_images=3,
        n_captions=3,
        text_to_image={1: 0.5, 5: 1.0},
        image_to_text={1: 0.25, 5: 0.75},
        chance_text_to_image={1: 0.1, 5: 0.5},
        chance_image_to_text={1: 0.1, 5: 0.5},
        model="m",
    )
    d = report.to_dict()
    assert d["text_to_image"] == {"R@1": 0.5, "R@5": 1.0}
    assert d["chance_image_to_text"]["R@5"] == 0.5
    table = report.format_table()
    assert "text->image" in table and "0.250" in table and "0.5000" in table


class _OracleEncoder:
    """Embeds images and captions as one-hot concept sets: perfect retrieval."""

    spec = SimpleNamespace(name="oracle")

    def __init__(self, world: Path) -> None:
        from xretrieve.train.world import concept_key, load_labels

        self.labels = load_labels(world)
        self.keys = sorted({concept_key(lab) for lab in self.labels.values()}, key=sorted)
        self.by_caption = {
            c: concept_key(lab) for lab in self.labels.values() for c in lab.captions
        }
        self.by_pixels = {
            lab.path: concept_key(lab) for lab in self.labels.values() if lab.split == "test"
        }
        self.order = [lab.path for lab in self.labels.values() if lab.split == "test"]

    def _onehot(self, keys: list[frozenset[str]]) -> np.ndarray:
        out = np.zeros((len(keys), len(self.keys)), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i, self.keys.index(k)] = 1.0
        return out

    def encode_images(self, images: list[object]) -> np.ndarray:
        # evaluate_world passes images in label order.
        return self._onehot([self.by_pixels[p] for p in self.order[: len(images)]])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._onehot([self.by_caption[t] for t in texts])


def test_evaluate_world_with_an_oracle(tmp_path: Path) -> None:
    from xretrieve.train.world import make_world

    make_world(tmp_path / "w", n=120, seed=3, image_size=32)
    report = evaluate_world(_OracleEncoder(tmp_path / "w"), tmp_path / "w")  # type: ignore[arg-type]
    assert report.n_images == report.n_captions == 24
    assert report.text_to_image == {1: 1.0, 5: 1.0, 10: 1.0}
    assert report.image_to_text == {1: 1.0, 5: 1.0, 10: 1.0}
    assert 0 < report.chance_text_to_image[1] < 0.2
    assert report.chance_text_to_image[10] > report.chance_text_to_image[1]
