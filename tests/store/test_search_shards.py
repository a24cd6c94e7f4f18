"""ann.search_shards: many shards searched side by side give exactly what one by one gives."""

from __future__ import annotations

import numpy as np
import pytest

from xretrieve.errors import InputError
from xretrieve.store import ann
from xretrieve.store.ann import topk

D = 32


def _shards() -> tuple[list[ann.BuiltIndex], np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for n, kind in ((3000, "ivf-sq8"), (500, "flat"), (2500, "ivf-flat"), (7, "flat")):
        x = rng.standard_normal((n, D)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        built = ann.build_index(x, ann.plan_index(n, D, index_type=kind))
        out.append(ann.with_params(built, ann.tune(built, x)))
    q = rng.standard_normal((3, D)).astype(np.float32)
    return out, q


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_side_by_side_equals_one_by_one(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(topk, "default_workers", lambda: workers)
    monkeypatch.setattr(topk, "_pool", None)
    shards, q = _shards()
    ks = [10, 5, 10, 10]
    got = ann.search_shards(shards, q, ks)
    assert len(got) == len(shards)
    for b, kk, (s, i) in zip(shards, ks, got, strict=True):
        s0, i0 = ann.search(b, q, kk)
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_array_equal(s, s0)
    # The shard of 7 rows pads to k with -1 / -inf, as `search` does.
    assert (got[3][1][:, 7:] == -1).all() and np.isneginf(got[3][0][:, 7:]).all()
    assert (topk._pool is None) == (workers == 1)


def test_one_k_for_all_and_bad_lengths() -> None:
    shards, q = _shards()
    assert [r[1].shape for r in ann.search_shards(shards, q, 4)] == [(3, 4)] * 4
    assert ann.search_shards([], q, 4) == []
    with pytest.raises(InputError, match="4 shards but 2 values of k"):
        ann.search_shards(shards, q, [1, 2])
    with pytest.raises(InputError, match="k must be a positive integer"):
        ann.search_shards(shards, q, 0)
