"""Single flight by key (node/flights.py): shared by the checksum database's gets and
lookups, list/latest refreshes, and the blob check on first serve."""

from __future__ import annotations

import asyncio

import pytest

from node.flights import Flights


async def test_callers_at_once_share_one_run() -> None:
    flights: Flights[str, int] = Flights()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return 7

    assert await asyncio.gather(*(flights.run("k", work) for _ in range(5))) == [7] * 5
    assert runs == 1 and "k" not in flights
    assert await flights.run("k", work) == 7 and runs == 2  # done: the next ask runs it again


async def test_the_first_caller_hanging_up_cancels_neither_the_work_nor_the_others() -> None:
    """A handler is cancelled when its client goes (aiohttp's handler_cancellation): the
    client that started the shared work must not take it, or the others' answers, away."""
    flights: Flights[str, str] = Flights()
    release = asyncio.Event()
    finished = False

    async def work() -> str:
        nonlocal finished
        await release.wait()
        finished = True
        return "record"

    first = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await second == "record"
    assert first.cancelled() and finished


async def test_an_error_reaches_every_caller_and_the_next_ask_runs_again() -> None:
    flights: Flights[str, int] = Flights()

    async def fail() -> int:
        await asyncio.sleep(0)
        raise OSError("upstream gone")

    got = await asyncio.gather(*(flights.run("k", fail) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(e, OSError) for e in got)
    assert "k" not in flights


async def test_aclose_cancels_the_work_still_running() -> None:
    flights: Flights[str, int] = Flights()
    task, new = flights.task("k", lambda: asyncio.sleep(3600, 1))
    assert new and flights.task("k", lambda: asyncio.sleep(0, 2)) == (task, False)
    await flights.aclose()
    assert task.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await task
