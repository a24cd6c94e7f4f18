"""The worker pool: searches and thumbnails run on N threads, with a bounded queue.

Rules kept here: at most `threads` jobs run and at most `queue` more wait; a job past that is
refused at once (`Busy`, answered 503 with Retry-After) instead of queueing without end; a job
whose client hung up while it waited is dropped unrun (`run(gone=...)`). The
event loop never runs a search itself, so /healthz and cached thumbnails stay fast while
every worker is busy. The encoder (torch), FAISS and Pillow release the GIL, so threads
overlap.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from xretrieve.serve.errors import Busy

__all__ = ["Gone", "WorkerPool"]


class Gone(Exception):
    """The client hung up before its answer was ready: there is no one to answer."""


T = TypeVar("T")


class WorkerPool:
    """N worker threads and room for `queue` waiting jobs; more is refused."""

    def __init__(self, *, threads: int, queue: int, retry_after: int = 1) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self.retry_after = retry_after
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xr-serve")
        self._lock = threading.Lock()
        self.pending = 0
        self.rejected = 0

    def submit(self, fn: Callable[[], T]) -> Future[tuple[T, float]]:
        """Run `fn` on a worker; the result comes with the seconds it waited. `Busy` if full."""
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.rejected += 1
            raise Busy(
                f"the server is busy ({self.capacity} requests running or waiting); try again",
                retry_after=self.retry_after,
            )
        queued = time.perf_counter()
        with self._lock:
            self.pending += 1

        def job() -> tuple[T, float]:
            waited = time.perf_counter() - queued
            return fn(), waited

        try:
            fut = self._executor.submit(job)
        except RuntimeError:  # shut down
            self._release(None)
            raise Busy("the server is shutting down", retry_after=self.retry_after) from None
        fut.add_done_callback(self._release)
        return fut

    def _release(self, _fut: object) -> None:
        with self._lock:
            self.pending -= 1
        self._slots.release()

    async def run(
        self,
        fn: Callable[[], T],
        *,
        gone: Callable[[], Awaitable[bool]] | None = None,
        poll: float = 0.05,
    ) -> tuple[T, float]:
        """Await `fn` run on a worker: (its result, seconds it waited for a worker).

        With `gone` (the client's "has it hung up?"), asked every `poll` seconds while the job
        waits or runs: once it says yes, a job still waiting is dropped without running (its
        place freed for the next request) and `Gone` is raised; a running one finishes unread.
        """
        job = self.submit(fn)
        fut = asyncio.wrap_future(job)
        if gone is None:
            return await fut
        while True:
            done, _ = await asyncio.wait({fut}, timeout=poll)
            if done:
                return fut.result()
            if await gone():
                job.cancel()  # a job still queued never starts; its place is free now
                fut.cancel()
                raise Gone("the client closed the request")

    def shutdown(self) -> None:
        """Finish the jobs already taken, refuse new ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
