"""Bounded in-memory maps of the request path, each sized in bytes: `LRU` (index rows
of hits, list/latest answers, and small files as hot answers, hot.py) and
`NegativeCache` (recent "not found" answers, kept as a few strings, never as the
exception with its traceback and frames).

Sizes are approximate: the length of every string or bytes object an item holds, plus
what CPython 3.11 spends around them (`OBJECT_OVERHEAD` per object, `ITEM_OVERHEAD`
per item for the dict slot and link, the record and its numbers). Measured with
tracemalloc, an index row costs what is counted (within 5 %); the smaller records of
list/latest and "not found" answers cost less than counted (about 70 %), never more.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from node.cache.rows import Entry, MetaEntry
from node.errors import NotFound

K = TypeVar("K")
V = TypeVar("V")

#: Bytes a str or bytes object costs besides its characters (sys.getsizeof("") is 49).
OBJECT_OVERHEAD = 49
#: Bytes an item costs besides its strings: the OrderedDict's slot and link, the
#: record object, its floats and ints (an index row's, the largest record).
ITEM_OVERHEAD = 145
#: An item over this share of a cache is not kept: one huge answer must not flush the rest.
MAX_ITEM_SHARE = 16


def approx_size(*parts: str | bytes | None) -> int:
    """What an item holding these strings (None: absent) costs in memory, roughly."""
    return ITEM_OVERHEAD + sum(len(p) + OBJECT_OVERHEAD for p in parts if p is not None)


def entry_size(key: str, e: Entry) -> int:
    return approx_size(key, e.module, e.version, e.sha256, e.h1)


def meta_size(key: tuple[str, str], m: MetaEntry) -> int:
    return approx_size(*key, m.module, m.kind, m.body)


@dataclass(frozen=True, slots=True)
class CacheSizes:
    """Bytes each in-memory cache of the request path may hold."""

    #: Small files (up to 64 KiB) as hot answers (hot.py): hits answered from memory.
    hot: int
    #: Index rows of recent hits: hits answered without SQLite.
    entries: int
    #: `@v/list`, `@latest` and version-query answers.
    meta: int
    #: Recent "not found" answers.
    negative: int

    @classmethod
    def split(cls, total: int) -> CacheSizes:
        """The `memory_cache` setting shared out: 11/16 hot answers (what the fast path
        answers small files from; ~350 bytes a file), 1/8 rows (hits aiohttp answers, large
        files), 1/8 list/latest/query answers, 1/16 "not found". Random-key hits at 100k
        cached versions ran at 41 % of their 1k rate with 1/2 for hot answers, 52 % with
        11/16: a file must be read from the store again once it is not in memory."""
        return cls(total * 11 // 16, total // 8, total // 8, total // 16)


class LRU(Generic[K, V]):
    """A mapping that forgets the least recently used items once their sizes (`size`
    of each key and value) add up to more than `max_bytes`. An item over
    1/MAX_ITEM_SHARE of that is not kept. Values are held alone (a size beside each
    would cost a tuple and an int per item): `size` is asked again when one leaves."""

    def __init__(self, max_bytes: int, size: Callable[[K, V], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._d: OrderedDict[K, V] = OrderedDict()
        #: Approximate bytes held now.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: K) -> V | None:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        n = self._size(key, value)
        if n > self.max_bytes // MAX_ITEM_SHARE:
            return
        self._d[key] = value
        self.bytes += n
        while self.bytes > self.max_bytes:
            self.bytes -= self._size(*self._d.popitem(last=False))

    def pop(self, key: K) -> None:
        hit = self._d.pop(key, None)
        if hit is not None:
            self.bytes -= self._size(key, hit)


@dataclass(frozen=True, slots=True)
class Negative:
    """What answering a "not found" again takes: its class (404, 410, or the chain's
    `off`), its one line, the upstream's own text (already cut to 4 KiB), its expiry."""

    kind: type[NotFound]
    message: str
    body: str | None
    expires: float

    def error(self) -> NotFound:
        return self.kind(self.message, body=self.body)

    def size(self, key: str) -> int:
        return approx_size(key, self.message, self.body)


class NegativeCache:
    """Recent "not found" answers by request key, kept `ttl` seconds (0: none), at most
    `max_bytes` of them.

    One TTL for all, so entries expire in the order they were added: `sweep` drops
    them from the front, and so does every `remember`. The node sweeps every few
    seconds (service.py), so memory comes back when misses stop, not only when the
    same keys are asked again. Over `max_bytes`, the oldest (the soonest to expire) go.
    """

    def __init__(self, ttl: float, clock: Callable[[], float], max_bytes: int = 4 << 20) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Negative] = OrderedDict()
        #: Approximate bytes held now.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: str) -> None:
        """Raise the remembered NotFound for `key` (a new one each time), if still fresh."""
        hit = self._entries.get(key)
        if hit is None:
            return
        if self.clock() < hit.expires:
            raise hit.error()
        self.forget(key)

    def remember(self, key: str, err: NotFound) -> None:
        if self.ttl <= 0:
            return
        now = self.clock()
        self.sweep(now)
        self.forget(key)
        neg = Negative(type(err), err.message, err.body, now + self.ttl)
        n = neg.size(key)
        if n > self.max_bytes // MAX_ITEM_SHARE:
            return
        self._entries[key] = neg
        self.bytes += n
        while self.bytes > self.max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= old.size(old_key)

    def forget(self, key: str) -> None:
        hit = self._entries.pop(key, None)
        if hit is not None:
            self.bytes -= hit.size(key)

    def sweep(self, now: float | None = None) -> int:
        """Drop the expired entries; how many went."""
        now = self.clock() if now is None else now
        dropped = 0
        while self._entries:
            key, first = next(iter(self._entries.items()))
            if first.expires > now:
                break
            self.forget(key)
            dropped += 1
        return dropped
