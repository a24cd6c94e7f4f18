"""Pipeline: a bounded, order-keeping map over worker threads, so decoding overlaps encoding.

Decoding (Pillow) and the encoder (torch) both release the GIL, so threads are enough to
keep every core busy; the window caps how many decoded images wait in memory, whatever
the size of the folder.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["bounded_map", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Decode threads when the caller does not say: one per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int
) -> Generator[R, None, None]:
    """Map `fn` over `items` in threads, yielding results in order with at most `window` in flight.

    `items` is consumed lazily, so it may be a generator over millions of files. Closing the
    iterator early cancels the work not yet started.
    """
    if workers < 1 or window < 1:
        raise ValueError(f"workers and window must be >= 1, got {workers} and {window}")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xr-decode")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
