"""Row selectors: a FAISS search among some rows of a shard only."""

from __future__ import annotations

import numpy as np
import pytest

from xretrieve.errors import InputError
from xretrieve.store import ann, selectors

D = 16


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((4000, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-flat"])
def test_search_selected_returns_selected_rows_only(vectors: np.ndarray, kind: str) -> None:
    built = ann.build_index(
        vectors, ann.plan_index(len(vectors), D, index_type=kind), use_gpu=False
    )
    rows = np.arange(0, 4000, 7, dtype=np.int64)
    sel = selectors.row_selector(built.ntotal, rows)
    assert sel.n_allowed == len(rows) and sel.fraction == pytest.approx(len(rows) / 4000)
    d, r = selectors.search_selected(built, vectors[14:15], 10, sel)
    assert d.shape == r.shape == (1, 10) and d.dtype == np.float32 and r.dtype == np.int64
    assert set(r[0].tolist()) <= set(rows.tolist())
    assert r[0, 0] == 14  # the query is row 14's own vector, and 14 is selected
    unselected = selectors.search_selected(built, vectors[15:16], 10, sel)[1][0]
    assert 15 not in unselected.tolist()


def test_selector_params_scale_the_search_to_the_fraction_let_through(
    vectors: np.ndarray,
) -> None:
    built = ann.build_index(
        vectors, ann.plan_index(len(vectors), D, index_type="ivf-flat"), use_gpu=False
    )
    p = ann.TunedParams(nprobe=2)
    half = selectors.row_selector(built.ntotal, np.arange(0, 4000, 2, dtype=np.int64))
    tenth = selectors.row_selector(built.ntotal, np.arange(0, 4000, 10, dtype=np.int64))
    assert selectors.selector_params(built, half, p, 10).nprobe == 4
    assert selectors.selector_params(built, tenth, p, 10).nprobe == 20
    tiny = selectors.row_selector(built.ntotal, np.array([3], np.int64))
    nlist = built.plan.nlist
    assert selectors.selector_params(built, tiny, p, 10).nprobe == nlist  # capped at nlist


def test_selector_must_cover_the_index(vectors: np.ndarray) -> None:
    built = ann.build_index(
        vectors, ann.plan_index(len(vectors), D, index_type="flat"), use_gpu=False
    )
    sel = selectors.row_selector(10, np.arange(5, dtype=np.int64))
    with pytest.raises(InputError, match="selector covers 10 rows"):
        selectors.search_selected(built, vectors[:1], 3, sel)
