"""Blocking reads of the hit path, run in worker threads in batches.

`asyncio.to_thread` costs a thread hand-off and an event-loop wake-up per call, more
than a hit's reads themselves (an index row and a small blob: tens of microseconds).
Here calls queued while the workers are busy are taken up to `BATCH` at a time, and
their results go back to the loop in one wake-up: under load, a hit costs about its
reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Calls one worker takes at once (the others take the rest: a slow disk still reads in parallel).
BATCH = 32

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Reads:
    def __init__(self, threads: int = 2, name: str = "modmesh-reads") -> None:
        self._max = threads
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    async def run(self, fn: Callable[[], T]) -> T:
        """fn() in a worker thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("reads closed")
            self._queue.append((loop, fut, fn))
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self._max:
                t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return await fut

    def close(self) -> None:
        """Workers finish what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue and not self._closed:
                    self._cond.wait()
                self._idle -= 1
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for loop, fut, fn in batch:
                try:
                    outcome: tuple[asyncio.Future[Any], bool, Any] = (fut, True, fn())
                except BaseException as e:
                    outcome = (fut, False, e)
                done.setdefault(loop, []).append(outcome)
            for loop, outcomes in done.items():
                try:
                    loop.call_soon_threadsafe(_deliver, outcomes)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass


def _deliver(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in outcomes:
        if fut.done():  # the caller was cancelled
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
