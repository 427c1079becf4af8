"""The scrub: re-hash every blob of the store once per `scrub_period`, in the
background, at no more than `scrub_rate` bytes a second.

A blob is due when its last check (admission, a serve check, the scrub, `modmesh
verify`) is older than the period; the longest-unchecked go first, so blobs admitted
over a week come due over a week. Each due blob is read in chunks, paced so that the
bytes read by any moment t stay within `rate * t` plus one chunk: client traffic
keeps the disk. A zip whose sha256 is right also has its h1 recomputed against its
rows (that read counts against the budget too). A blob that fails goes to quarantine
(integrity.py) and its files are fetched again at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from node.cache.index import Entry, Index
from node.cache.integrity import Integrity, read_problem
from node.cache.store import BlobStore
from node.golang import dirhash, modzip
from node.golang.zipstream import ZipStreamHasher
from node.metrics import Metrics

log = logging.getLogger(__name__)

CHUNK = 1 << 20
BLOCK = 4096
#: Longest sleep while nothing is due (a blob admitted meanwhile is due a period later).
IDLE = 60.0


class Pacer:
    """Spends a byte budget of `rate` per second, starting with one `burst`."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self._at = clock()

    async def spend(self, n: int) -> None:
        now = self.clock()
        self._at = max(self._at, now) + n / self.rate
        if self._at > now:
            await self.sleep(self._at - now)


class Scrubber:
    def __init__(
        self,
        index: Index,
        store: BlobStore,
        integrity: Integrity,
        metrics: Metrics,
        period: float,
        rate: int,
        refetch: Callable[[Entry], Awaitable[Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.store = store
        self.integrity = integrity
        self.metrics = metrics
        self.period = period
        self.rate = rate
        self.refetch = refetch
        self.clock = clock
        self.pacer = Pacer(rate)
        self.checked = 0
        self.bytes = 0
        self.last_pass: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        if self.period > 0 and self.rate > 0:
            self._task = asyncio.create_task(self._run(), name="scrub")

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._fetches) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:  # cancelled, or a repair that failed: nothing to keep
                pass

    async def _run(self) -> None:
        while True:
            try:
                done = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrub step failed")
                done = False
                await asyncio.sleep(IDLE)
            if done:
                await asyncio.sleep(await self._idle())

    async def step(self, batch: int = 64) -> bool:
        """Check the next due blobs; True when none were due."""
        due = await self.index.due_for_check(self.clock() - self.period, batch)
        for sha256 in due:
            await self.check(sha256)
        if not due:
            self.last_pass = self.clock()
        return not due

    async def _idle(self) -> float:
        """How long nothing can come due: a blob checked now is due a period from now."""
        oldest = await self.index.oldest_check()
        due = self.period if oldest is None else oldest + self.period - self.clock()
        return min(IDLE, self.period, max(1.0, due))

    async def check(self, sha256: str) -> bool:
        """Re-hash one blob (paced); quarantine it and fetch its files again if it fails."""
        rows = await self.index.rows_of(sha256)
        if not rows:
            return True
        zips = [e for e in rows if e.kind == "zip" and e.h1]
        problem = await self._hash(sha256, rows[0].size, zips)
        self.checked += 1
        self.metrics.blobs_checked.labels("scrub").inc()
        if problem is None:
            await self.index.mark_checked(sha256, self.clock())
            return True
        if not await self.index.rows_of(sha256):  # evicted or repaired meanwhile
            return True
        await self.integrity.quarantine(sha256, problem, "scrub")
        for e in rows:
            t = asyncio.create_task(self._repair(e))
            self._fetches.add(t)
            t.add_done_callback(self._fetches.discard)
        return False

    async def _repair(self, e: Entry) -> None:
        try:
            await self.refetch(e)
        except Exception as err:
            log.warning("scrub: cannot fetch %s@%s .%s again yet: %s", e.module, e.version, e.kind, err)

    async def _hash(self, sha256: str, size: int, zips: list[Entry]) -> str | None:
        """Why the blob is bad (what it hashes to, "missing", an h1 that differs), or None.
        A zip's entries are hashed in the same paced pass (ZipStreamHasher)."""
        path = self.store.path_for(sha256)  # for a zip (zips are always files)
        h = hashlib.sha256()
        entries = ZipStreamHasher() if zips else None
        total = 0

        def read(f: BinaryIO) -> int:
            data = f.read(CHUNK)
            h.update(data)
            if entries is not None:
                entries.feed(data)
            return len(data)

        try:
            with await asyncio.to_thread(self.store.open_blob, sha256) as f:
                while n := await asyncio.to_thread(read, f):
                    total += n
                    self.bytes += n
                    self.metrics.scrub_bytes.inc(n)
                    # Paid after the read: by any moment the scrub has read at most
                    # rate * elapsed + one chunk. A file costs at least a block.
                    await self.pacer.spend(max(n, BLOCK))
        except OSError as e:
            return read_problem(e)
        found = h.hexdigest()
        if found != sha256:
            return found
        if total != size:
            return "wrong size"
        if entries is None:
            return None
        return await self._h1(path, entries.digests(), zips)

    async def _h1(self, path: Path, digests: dict[str, tuple[str, int]] | None, zips: list[Entry]) -> str | None:
        try:
            if digests is not None:
                h1 = dirhash.h1_from_digests((name, d) for name, (d, _) in digests.items())
            else:  # a zip the stream parser cannot vouch for: read it again, whole
                h1 = await asyncio.to_thread(modzip.h1_zip, path)
                await self.pacer.spend(zips[0].size)
        except (OSError, ValueError) as e:
            return f"h1 unreadable: {e}"
        wrong = [e for e in zips if e.h1 != h1]
        return f"h1 {h1}, the index says {wrong[0].h1}" if wrong else None

    def health(self) -> dict[str, Any]:
        return {
            "period_s": self.period,
            "rate_bytes_per_s": self.rate,
            "checked": self.checked,
            "bytes_read": self.bytes,
            "last_pass_completed": self.last_pass,
        }
