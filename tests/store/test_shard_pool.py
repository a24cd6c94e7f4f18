"""The shard search pool: one per process however many threads first use it, and shut down."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest

from xretrieve.store import ann
from xretrieve.store.ann import topk

D = 16
THREADS = 16
T = TypeVar("T")


@pytest.fixture
def fresh_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No shard pool yet, and enough cores for one; the test's pool is shut down after it."""
    monkeypatch.setattr(topk, "default_workers", lambda: 4)
    topk.shutdown_shard_pool()
    yield
    topk.shutdown_shard_pool()


def _shards() -> tuple[list[ann.BuiltIndex], np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for n in (300, 200, 100):
        x = rng.standard_normal((n, D)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(ann.build_index(x, ann.plan_index(n, D, index_type="flat")))
    return out, rng.standard_normal((2, D)).astype(np.float32)


def _all_at_once(fn: Callable[[], T], n: int = THREADS) -> list[T]:
    """`fn()` on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(_: int) -> T:
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


@pytest.mark.usefixtures("fresh_pool")
def test_threads_using_the_pool_at_once_get_one_pool() -> None:
    pools = _all_at_once(topk._shard_pool)
    assert pools[0] is not None and all(p is pools[0] for p in pools)
    assert topk._pool is pools[0]


@pytest.mark.usefixtures("fresh_pool")
def test_searches_from_many_threads_share_the_pool_and_match_one_by_one() -> None:
    shards, q = _shards()
    want = [ann.search(b, q, 5) for b in shards]
    for got in _all_at_once(lambda: ann.search_shards(shards, q, 5)):
        for (s, i), (s0, i0) in zip(got, want, strict=True):
            np.testing.assert_array_equal(i, i0)
            np.testing.assert_array_equal(s, s0)
    assert topk._pool is not None


@pytest.mark.usefixtures("fresh_pool")
def test_after_shutdown_the_next_search_makes_a_new_pool() -> None:
    shards, q = _shards()
    ann.search_shards(shards, q, 5)
    first = topk._pool
    assert first is not None
    topk.shutdown_shard_pool()
    topk.shutdown_shard_pool()  # twice is harmless
    assert topk._pool is None
    with pytest.raises(RuntimeError):  # the old pool's threads are gone for good
        first.submit(int)
    got = ann.search_shards(shards, q, 5)
    np.testing.assert_array_equal(got[0][1], ann.search(shards[0], q, 5)[1])
    assert topk._pool is not None and topk._pool is not first


@pytest.mark.usefixtures("fresh_pool")
def test_a_search_holding_a_pool_shut_down_meanwhile_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shards, q = _shards()
    stale = topk._shard_pool()
    assert stale is not None
    topk.shutdown_shard_pool()
    monkeypatch.setattr(topk, "_shard_pool", lambda: stale)  # handed out before the shutdown
    got = ann.search_shards(shards, q, 5)
    for b, (s, i) in zip(shards, got, strict=True):
        s0, i0 = ann.search(b, q, 5)
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_array_equal(s, s0)
