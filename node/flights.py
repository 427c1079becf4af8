"""Single flight: work asked for by several callers at once runs once, and all of them
get its result (or its error)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Flights(Generic[K, T]):
    """Work by key. A caller that goes away does not cancel the work the others share."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._running

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._running.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = fut
        try:
            result = await work()
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: the waiters get it too
            raise
        finally:
            del self._running[key]
