"""The search stages on their own: exact top-k over a subset, subset search through a selector."""

from __future__ import annotations

import numpy as np
import pytest

from xretrieve.query import stages
from xretrieve.store import ann, selectors

D = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _unit(np.random.default_rng(0).standard_normal((3000, D)))


def _built(vectors: np.ndarray, kind: str) -> ann.BuiltIndex:
    return ann.build_index(vectors, ann.plan_index(len(vectors), D, index_type=kind), use_gpu=False)


def _truth(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    s = vectors[rows] @ q[0]
    return rows[np.argsort(-s, kind="stable")[:k]]


@pytest.mark.parametrize("block", [32_768, 100])  # one block, then many merged by the heap
def test_exact_top_is_the_brute_force_top(
    vectors: np.ndarray, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "_EXACT_BLOCK", block)
    built = _built(vectors, "flat")
    q = vectors[7:8]
    rows = np.arange(1, 3000, 3, dtype=np.int64)  # row 7 is not among them
    d, r = stages.exact_top(built, q, rows, 25)
    assert d.shape == r.shape == (1, 25)
    np.testing.assert_array_equal(r[0], _truth(vectors, q, rows, 25))
    np.testing.assert_allclose(d[0], vectors[r[0]] @ q[0], atol=1e-6)
    assert list(d[0]) == sorted(d[0], reverse=True)
    few = np.array([5, 9], np.int64)  # fewer rows than k: all of them
    assert sorted(stages.exact_top(built, q, few, 25)[1][0]) == [5, 9]


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq"])
def test_subset_search_returns_only_allowed_rows_exactly_scored(
    vectors: np.ndarray, kind: str
) -> None:
    built = _built(vectors, kind)
    q = vectors[11:12]
    rows = np.flatnonzero(np.arange(3000) % 4 == 1).astype(np.int64)
    made: list[int] = []

    def selector() -> selectors.RowSelector:
        made.append(1)
        return selectors.row_selector(built.ntotal, rows)

    for exact_max in (10_000, 10):  # exact over the subset, then through the selector
        d, r = stages.search_subset(built, q, 20, rows, exact_max=exact_max, selector=selector)
        ok = r[0] >= 0
        assert ok.sum() >= 20 and set(r[0][ok]) <= set(rows.tolist())
        # Scores are exact inner products with the stored vectors (fp16 ones for ivf-pq).
        stored = ann.reconstruct_vectors(built, r[0][ok])
        np.testing.assert_allclose(d[0][ok], stored @ q[0], atol=1e-5)
        if kind != "ivf-pq":  # re-scored candidates of compressed codes may miss a few
            assert set(r[0][ok][:10]) == set(_truth(vectors, q, rows, 10).tolist())
    assert made == [1]  # the selector is only made when the selector path runs


def test_subset_search_falls_back_to_exact_when_the_selector_comes_up_short(
    vectors: np.ndarray,
) -> None:
    built = _built(vectors, "ivf-flat")
    q = vectors[3:4]
    rows = np.array([0, 1, 2, 2999, 1500, *range(100, 140)], np.int64)

    # A selector that lets nothing through: the search must still return `want` rows.
    nothing = selectors.row_selector(built.ntotal, np.empty(0, np.int64))
    d, r = stages.search_subset(built, q, 8, rows, exact_max=0, selector=lambda: nothing)
    np.testing.assert_array_equal(r[0], _truth(vectors, q, rows, 8))
    np.testing.assert_allclose(d[0], vectors[r[0]] @ q[0], atol=1e-6)
