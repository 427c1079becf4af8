"""Single flight: work asked for by several callers at once runs once, in a task of its
own, and all of them get its result (or its error)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Flights(Generic[K, T]):
    """Work by key. It runs in its own task, so a caller that goes away (a client that
    hung up, its handler cancelled) cancels neither the work nor the others' wait."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._running

    def task(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> tuple[asyncio.Task[T], bool]:
        """The task doing `key`'s work, started now if none is; and whether it was."""
        running = self._running.get(key)
        if running is not None:
            return running, False
        task = asyncio.ensure_future(work())
        self._running[key] = task
        task.add_done_callback(functools.partial(self._done, key))
        return task, True

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return await asyncio.shield(self.task(key, work)[0])

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone

    async def aclose(self) -> None:
        """Cancel the work still running."""
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
