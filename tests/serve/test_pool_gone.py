"""A request whose client hung up gives its place in the worker queue back, unrun."""

from __future__ import annotations

import asyncio
import threading

import pytest

from xretrieve.serve.pool import Gone, WorkerPool


def test_a_waiting_job_of_a_client_that_hung_up_never_runs() -> None:
    pool = WorkerPool(threads=1, queue=1)
    release = threading.Event()
    ran: list[str] = []

    def blocker() -> str:
        release.wait(10)
        ran.append("first")
        return "first"

    def second() -> str:
        ran.append("second")
        return "second"

    async def scenario() -> str:
        first = asyncio.ensure_future(pool.run(blocker))
        await asyncio.sleep(0.05)  # the one worker is busy now
        calls = 0

        async def gone() -> bool:
            nonlocal calls
            calls += 1
            return calls >= 2  # the client hangs up while its job waits

        with pytest.raises(Gone):
            await pool.run(second, gone=gone, poll=0.01)
        assert pool.pending == 1  # its place is free again: only the first job holds one
        release.set()
        result, _ = await first
        return result

    assert asyncio.run(scenario()) == "first"
    pool.shutdown()
    assert ran == ["first"]


def test_a_client_that_stays_gets_its_answer() -> None:
    pool = WorkerPool(threads=1, queue=0)

    async def never() -> bool:
        return False

    result, waited = asyncio.run(pool.run(lambda: 42, gone=never, poll=0.01))
    pool.shutdown()
    assert result == 42 and waited >= 0.0
