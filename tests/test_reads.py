"""The hit path's batched worker threads (node/cache/reads.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node.cache.reads import BATCH, Reads


async def test_results_and_errors_reach_their_callers_from_worker_threads() -> None:
    reads = Reads(threads=2)
    loop_thread = threading.get_ident()

    def where(i: int) -> tuple[int, int]:
        return i, threading.get_ident()

    def boom() -> None:
        raise OSError("disk gone")

    try:
        got = await asyncio.gather(*(reads.run(lambda i=i: where(i)) for i in range(3 * BATCH)))
        assert [i for i, _ in got] == list(range(3 * BATCH))
        assert all(t != loop_thread for _, t in got)
        with pytest.raises(OSError, match="disk gone"):
            await reads.run(boom)
    finally:
        reads.close()


async def test_calls_queued_while_a_worker_is_busy_come_back_in_one_wakeup() -> None:
    """A worker takes up to BATCH queued calls at once and hands their results to the
    loop together: one wake-up for many hits."""
    reads = Reads(threads=1)
    gate = threading.Event()
    wakeups = 0
    loop = asyncio.get_running_loop()
    real = loop.call_soon_threadsafe

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        return real(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        first = asyncio.ensure_future(reads.run(gate.wait))
        await asyncio.sleep(0.05)  # the worker is busy with the first call
        rest = [asyncio.ensure_future(reads.run(lambda i=i: i)) for i in range(BATCH)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await first is True
        assert await asyncio.gather(*rest) == list(range(BATCH))
        assert wakeups == 2
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        reads.close()


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    reads = Reads(threads=1)
    gate = threading.Event()
    try:
        blocked = asyncio.ensure_future(reads.run(gate.wait))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(reads.run(lambda: "late"))
        kept = asyncio.ensure_future(reads.run(lambda: "kept"))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        assert await blocked is True and await kept == "kept"
        assert gone.cancelled()
    finally:
        reads.close()


async def test_closed_reads_refuse_new_calls() -> None:
    reads = Reads()
    assert await reads.run(lambda: 1) == 1
    reads.close()
    with pytest.raises(RuntimeError):
        await reads.run(lambda: 2)
