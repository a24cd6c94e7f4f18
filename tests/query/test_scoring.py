"""Pure scoring functions: composition, normalisation, fusion, MMR, duplicate collapse."""

from __future__ import annotations

import numpy as np
import pytest

from xretrieve.errors import EmptyQueryError, InputError
from xretrieve.query import scoring


def _unit(*rows: list[float]) -> np.ndarray:
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_compose_is_the_normalised_weighted_difference() -> None:
    p = _unit([1, 0, 0], [0, 1, 0])
    n = _unit([0, 0, 1])
    q = scoring.compose(p, n, weights=[2.0, 1.0], negative_weights=[0.5])
    expected = np.array([2.0, 1.0, -0.5]) / np.linalg.norm([2.0, 1.0, -0.5])
    np.testing.assert_allclose(q[0], expected, rtol=1e-6)
    assert q.shape == (1, 3) and q.dtype == np.float32
    # The default negative weight is 0.5.
    np.testing.assert_allclose(scoring.compose(p, n), scoring.compose(p, n, negative_weights=[0.5]))


def test_compose_bad_input() -> None:
    p = _unit([1, 0])
    with pytest.raises(EmptyQueryError, match="no positive term"):
        scoring.compose(np.empty((0, 2), np.float32), p)
    with pytest.raises(InputError, match="2 weights for 1 terms"):
        scoring.compose(p, weights=[1, 2])
    with pytest.raises(InputError, match="> 0"):
        scoring.compose(p, weights=[0.0])
    with pytest.raises(InputError, match=">= 0"):
        scoring.compose(p, p, negative_weights=[-1.0])
    with pytest.raises(InputError, match="cancel"):
        scoring.compose(p, p, negative_weights=[1.0])


def test_minmax_and_top_k() -> None:
    np.testing.assert_allclose(scoring.minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(scoring.minmax([5.0, 5.0]), [1.0, 1.0])
    assert scoring.minmax([]).size == 0
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert scoring.top_k(s, 3).tolist() == [1, 3, 2]  # ties keep input order
    assert scoring.top_k(s, 10).tolist() == [1, 3, 2, 4, 0]
    assert scoring.top_k(s, 0).size == 0


def test_rrf_sums_reciprocal_ranks() -> None:
    got = scoring.rrf([[0, 1, 2], [2, 1]], 4, k=60)
    assert got[0] == pytest.approx(1 / 61)
    assert got[1] == pytest.approx(1 / 62 + 1 / 62)
    assert got[2] == pytest.approx(1 / 63 + 1 / 61)
    assert got[3] == 0.0
    # An item second in both lists beats one first in a single list.
    assert got[1] > got[0]
    with pytest.raises(InputError):
        scoring.rrf([[0]], 1, k=-1)


def test_convex_fusion_alpha_extremes() -> None:
    dense, lex = np.array([0.9, 0.5, 0.1]), np.array([0.0, 2.0, 8.0])
    assert scoring.top_k(scoring.convex_fusion(dense, lex, alpha=1.0), 3).tolist() == [0, 1, 2]
    assert scoring.top_k(scoring.convex_fusion(dense, lex, alpha=0.0), 3).tolist() == [2, 1, 0]
    np.testing.assert_allclose(scoring.convex_fusion(dense, lex, alpha=0.5), [0.5, 0.375, 0.5])
    with pytest.raises(InputError, match="alpha"):
        scoring.convex_fusion(dense, lex, alpha=1.5)


def test_mmr_trades_relevance_for_diversity() -> None:
    v = _unit([1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0.99, 0, 0.05])
    rel = np.array([1.0, 0.99, 0.8, 0.98])
    assert scoring.mmr(rel, v, 3, lam=1.0).tolist() == [0, 1, 3]  # pure relevance
    assert scoring.mmr(rel, v, 2, lam=0.5).tolist() == [0, 2]  # the different one second
    assert scoring.mmr(rel, v, 10, lam=0.5).size == 4
    with pytest.raises(InputError, match="lambda"):
        scoring.mmr(rel, v, 2, lam=2.0)


def test_collapse_duplicates_keeps_the_first_of_each_group() -> None:
    v = _unit([1, 0], [1, 0.001], [0, 1], [0.001, 1], [1, 1])
    assert scoring.collapse_duplicates(v, threshold=0.99).tolist() == [0, 2, 4]
    assert scoring.collapse_duplicates(v, threshold=1.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="cosine"):
        scoring.collapse_duplicates(v, threshold=3)
