"""Bounded in-memory maps of the request path: an LRU, and the negative cache of
recent "not found" answers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from node.errors import NotFound

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used key."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxlen:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)


class NegativeCache:
    """Recent "not found" answers by request key, kept `ttl` seconds (0: none)."""

    def __init__(self, ttl: float, clock: Callable[[], float], maxlen: int = 50_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: LRU[str, tuple[float, NotFound]] = LRU(maxlen)

    def check(self, key: str) -> None:
        """Raise the remembered NotFound for `key`, if it is still fresh."""
        hit = self._entries.get(key)
        if hit is not None:
            expires, err = hit
            if self.clock() < expires:
                raise err
            self._entries.pop(key)

    def remember(self, key: str, err: NotFound) -> None:
        if self.ttl > 0:
            self._entries.put(key, (self.clock() + self.ttl, err))

    def forget(self, key: str) -> None:
        self._entries.pop(key)
