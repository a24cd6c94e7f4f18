"""The bounded, order-keeping thread map (`xretrieve._threads`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from xretrieve._threads import bounded_map, default_workers

N = 50
WINDOW = 6
WORKERS = 8  # more threads than the window: only the window can hold work back

Mapper = Callable[[Callable[[int], int], Iterable[int]], Iterator[int]]


def _bounded(fn: Callable[[int], int], items: Iterable[int]) -> Iterator[int]:
    return bounded_map(fn, items, workers=WORKERS, window=WINDOW)


def _unbounded(fn: Callable[[int], int], items: Iterable[int]) -> Iterator[int]:
    # ThreadPoolExecutor.map submits every item at once: what the window must prevent.
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True)


def _measure(mapper: Mapper) -> dict[str, Any]:
    """Run `mapper` over N slow items; report results, peak running and peak in-flight items."""
    taken = 0  # items the mapper has pulled from the input
    running = peak_running = 0
    lock = threading.Lock()
    # The first WINDOW items wait for each other: a map that cannot run WINDOW items at
    # once breaks the barrier (after its timeout) instead of passing.
    barrier = threading.Barrier(WINDOW, timeout=10)

    def items() -> Iterator[int]:
        nonlocal taken
        for i in range(N):
            taken += 1
            yield i

    def work(i: int) -> int:
        nonlocal running, peak_running
        with lock:
            running += 1
            peak_running = max(peak_running, running)
        if i < WINDOW:
            barrier.wait()
        time.sleep(0.001 * (i % 3))
        with lock:
            running -= 1
        return i * i

    results: list[int] = []
    in_flight: list[int] = []  # pulled but not yet handed back, seen at each result
    for r in mapper(work, items()):
        in_flight.append(taken - len(results))
        results.append(r)
    return {"results": results, "peak_running": peak_running, "peak_in_flight": max(in_flight)}


def test_bounded_map_keeps_order_and_holds_exactly_the_window() -> None:
    got = _measure(_bounded)
    assert got["results"] == [i * i for i in range(N)]
    assert got["peak_in_flight"] == WINDOW  # reached, never passed
    assert got["peak_running"] == WINDOW  # with WORKERS > WINDOW threads free


def test_the_window_check_fails_for_an_unbounded_map() -> None:
    got = _measure(_unbounded)
    assert got["results"] == [i * i for i in range(N)]  # same results ...
    assert got["peak_in_flight"] == N  # ... but it pulls every item at once


def test_bounded_map_pulls_items_lazily_and_cancels_the_rest() -> None:
    pulled: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10_000):
            pulled.append(i)
            yield i

    it = bounded_map(lambda i: i, items(), workers=2, window=3)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    it.close()
    assert len(pulled) <= 4 + 3  # never more than the window ahead of the consumer


def test_bounded_map_refuses_a_zero_window() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        list(bounded_map(lambda i: i, [1], workers=1, window=0))
    assert default_workers() >= 1
