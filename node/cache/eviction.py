"""What eviction removes first: a pure score of use, recency and size, and the plan
that brings a store under its cap (node/cache/storage.py carries it out).

The plan is made from the index a batch of blobs at a time: `VictimHeap` keeps only
the lowest-scored blobs that together free what is needed (`plan_eviction` is the
same choice made from a whole list, the reference it is tested against)."""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from node.cache.rows import Usage

#: Popularity halves for every this many seconds without an access.
HALF_LIFE = 3 * 86400.0
#: Size is a tie-breaker, not a reason to drop what is used: below SIZE_SCALE it
#: hardly matters, and above it each doubling of size weighs 1/SIZE_WEIGHT of a
#: doubling of hits, so a 10 MB zip hit a few times outlives a 2 kB one used once.
SIZE_SCALE = 64 * 1024
SIZE_WEIGHT = 8.0
#: An eviction pass stops at this fraction of the cap.
LOW_WATER = 0.95


def score(hits: int, last_access: float, size: int, pinned: bool, now: float, half_life: float = HALF_LIFE) -> float:
    """How much the site would miss a file; the lowest score is evicted first.

    Popularity grows with the log of the hit count (a burst of a thousand
    requests does not protect a file forever), decays by half every
    `half_life` seconds since the last access (what the site stopped using
    goes), and is divided by a mild size penalty (among equally used files the
    big ones free more space). Pinned files are never evicted: infinity.
    """
    if pinned:
        return math.inf
    age = max(0.0, now - last_access)
    popularity = math.log2(2 + max(0, hits))
    recency: float = 0.5 ** (age / half_life)
    return popularity * recency / (1 + math.log2(1 + max(0, size) / SIZE_SCALE) / SIZE_WEIGHT)


@dataclass(frozen=True, slots=True)
class BlobCandidate:
    """One blob and every index row referencing it: the unit of eviction."""

    sha256: str
    size: int
    score: float
    files: tuple[tuple[str, str, str], ...]  # (module, version, kind)


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    victims: tuple[BlobCandidate, ...]
    used_before: int
    used_after: int


def candidates(
    rows: Iterable[Usage], is_pinned: Callable[[str], bool], now: float, half_life: float = HALF_LIFE
) -> list[BlobCandidate]:
    """Group rows by blob. A blob is worth as much as its most valuable row, so a
    cold version never takes away a `.mod` body a hot (or pinned) one shares."""
    groups: dict[str, list[Usage]] = defaultdict(list)
    for r in rows:
        groups[r.sha256].append(r)
    out = []
    for sha, rs in groups.items():
        best = max(
            score(r.hits, max(r.last_access or 0.0, r.fetched_at), r.size, is_pinned(r.module), now, half_life)
            for r in rs
        )
        out.append(BlobCandidate(sha, rs[0].size, best, tuple((r.module, r.version, r.kind) for r in rs)))
    return out


def plan_eviction(blobs: Sequence[BlobCandidate], target: int) -> EvictionPlan:
    """The fewest lowest-scored unpinned blobs whose removal brings the store to `target`.

    If even evicting every unpinned blob is not enough, all of them go and
    `used_after` says how far over the pinned set alone is.
    """
    used = sum(b.size for b in blobs)
    victims: list[BlobCandidate] = []
    after = used
    for b in sorted(blobs, key=lambda b: (b.score, -b.size, b.sha256)):
        if after <= target or math.isinf(b.score):
            break
        victims.append(b)
        after -= b.size
    return EvictionPlan(tuple(victims), used, after)


def _order(b: BlobCandidate) -> tuple[float, int, str]:
    """Eviction order: lowest score first, then the biggest, then by name."""
    return (b.score, -b.size, b.sha256)


@dataclass(order=False)
class _Top:
    """A heap item that puts the blob evicted last on top (heapq is a min-heap)."""

    key: tuple[float, int, str]
    blob: BlobCandidate = field(compare=False)

    def __lt__(self, other: _Top) -> bool:
        return other.key < self.key


class VictimHeap:
    """The victims of one eviction round, fed one blob at a time: the shortest prefix of
    the eviction order whose sizes add up to `need` bytes, or its first `limit` blobs
    when it is longer (then another round follows). Memory: at most `limit` blobs,
    whatever the size of the store. Pinned blobs (infinite score) are never victims."""

    def __init__(self, need: int, limit: int = 10_000) -> None:
        self.need = need
        self.limit = limit
        self._heap: list[_Top] = []
        self._bytes = 0
        #: Blobs left out because `limit` was reached: the round does not free `need`.
        self.truncated = False

    def offer(self, b: BlobCandidate) -> None:
        if math.isinf(b.score) or self.need <= 0:
            return
        heapq.heappush(self._heap, _Top(_order(b), b))
        self._bytes += b.size
        while len(self._heap) > 1:
            top = self._heap[0].blob
            if len(self._heap) > self.limit:
                self.truncated = True
            elif self._bytes - top.size < self.need:
                break
            heapq.heappop(self._heap)
            self._bytes -= top.size

    def victims(self) -> list[BlobCandidate]:
        """In eviction order."""
        return sorted((t.blob for t in self._heap), key=_order)


@dataclass
class EvictReport:
    max_size: int | None
    used_before: int
    used_after: int
    evicted_blobs: int = 0
    evicted_files: int = 0
    evicted_bytes: int = 0
    #: The pinned modules alone exceed the cap.
    pinned_over_cap: bool = False


def normalize_pattern(pattern: str) -> str:
    """One GOPRIVATE-style glob. Commas would make it several and a version
    (`m@v`) would never match a module path, so both are refused, not stored."""
    p = pattern.strip().removesuffix("/")
    if not p or any(c.isspace() or c in ",@" for c in p):
        raise ValueError(f"pin pattern {pattern!r}: want one module path pattern such as rsc.io/* or corp.example.com")
    return p
