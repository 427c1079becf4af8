"""Storage limits: size accounting, eviction, pins, garbage collection, verification.

A site gives the node a disk budget (`max_size`); what it keeps inside that budget
should be what the site builds with. So:

* **Accounting** counts the logical bytes of distinct blobs the index references
  (blobs are content-addressed and shared: one `.mod` body can serve many
  versions). File-system overhead, the SQLite index and checksum-database tiles
  are not counted; leave headroom for them.
* **Eviction** runs in the background whenever the store goes over the cap: after
  a write (the manager is a StoreObserver) and on the node's periodic tick. It
  removes whole blobs, i.e. every index row that references one, lowest `score`
  first, until the store is back under `LOW_WATER` of the cap (so that one more
  write does not start another pass). It reads the index a batch of blobs at a
  time and keeps only the victims (at most `ROUND` a round): its memory does not
  grow with the store. Rows are deleted before their blob, so no
  one is ever pointed at a missing file, and a blob is unlinked only when no row
  references it any more. Pinned modules are never candidates.
* **Pins** are GOPRIVATE-style patterns (`rsc.io/*`, `corp.example.com`) kept in
  the index's `pins` table, so every process that opens the data directory sees
  the same ones.
* **gc** removes what no index row explains: orphan blobs (a crash between the
  blob's rename and its index row) and stale temp files, both only once they are
  older than a grace period, because a running node may be about to index them;
  plus rows whose blob disappeared and expired list/latest answers of modules
  with nothing else cached. Then it enforces the cap.
* **verify** re-hashes every blob against its name and the index's sha256, size
  and h1, and repairs a bad file by deleting it and fetching it again through
  `ModuleProxy.versioned`, which asks the mesh's peers first, then the upstreams,
  and verifies the new bytes exactly as on any miss.

The policy is in eviction.py, gc and verify in upkeep.py; the command line and the
`/_admin/` endpoints in node/tools/storage.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from prometheus_client import Counter, Gauge

from node.cache.eviction import (
    HALF_LIFE,
    LOW_WATER,
    BlobCandidate,
    EvictReport,
    VictimHeap,
    candidates,
    normalize_pattern,
)
from node.cache.index import Entry, Index
from node.cache.protocol import Kind, ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.store import BlobStore
from node.cache.upkeep import GRACE, GcReport, Upkeep, VerifyReport
from node.golang.patterns import match_prefix_patterns
from node.metrics import Metrics

log = logging.getLogger(__name__)

#: Blobs read from the index per query, and the most victims one eviction round keeps.
BATCH = 1000
ROUND = 10_000

# ---- the manager -------------------------------------------------------------------


class StorageManager:
    """Keeps one node's store under its cap; also pins, gc and verify for the CLI.

    Deleting goes through one lock (eviction, gc, verify never interleave their
    deletions). Refetches during verify run outside it: they write, and a write
    may start an eviction pass, which must not wait for verify to finish.
    """

    def __init__(
        self,
        store: BlobStore,
        index: Index,
        proxy: ModuleProxy,
        metrics: Metrics,
        max_size: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.index = index
        self.proxy = proxy
        self.max_size = max_size
        self.clock = clock
        self.half_life = HALF_LIFE
        self._used = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        #: Set after a pass that could not get under the cap (pins alone exceed
        #: it): writes stop triggering passes until the next periodic check.
        self._saturated = False
        self._pin_globs = ""
        r = metrics.registry
        self._m_max = Gauge("modmesh_store_max_bytes", "The configured cap (max_size), 0 if none", registry=r)
        self._m_max.set(max_size or 0)
        self._m_files = Counter("modmesh_evicted_files", "Index rows removed by eviction", registry=r)
        self._m_bytes = Counter("modmesh_evicted_bytes", "Blob bytes freed by eviction", registry=r)
        corrupt = Counter("modmesh_verify_problems", "Files verify found bad", ["reason"], registry=r)
        self.upkeep = Upkeep(store, index, proxy, self._lock, self.evict, self._unlink_unreferenced, corrupt, clock)

    # -- triggers --------------------------------------------------------------

    def stored(self, entry: Entry) -> None:
        """StoreObserver: a blob was committed. Shared blobs are counted twice
        here; the pass recomputes exactly, so the estimate only errs high."""
        self._used += entry.size
        if self._over() and not self._saturated:
            self._schedule()

    def observe(self, used: int) -> None:
        """The periodic tick's exact figure; retries a saturated cap (pins may have changed)."""
        self._used = used
        self._saturated = False
        if self._over():
            self._schedule()

    def refusal(self, module: str, size: int) -> str | None:
        """Why the store must not take a file of `size` bytes of `module`, or None. A file
        larger than the cap, or any unpinned file while pinned ones fill the cap, would
        only evict everything else and then itself: it passes through to clients instead."""
        if self.max_size is None:
            return None
        if size > self.max_size:
            return f"the file is larger than max_size ({self.max_size} bytes)"
        if self._saturated and not (self._pin_globs and match_prefix_patterns(self._pin_globs, module)):
            return f"pinned modules fill max_size ({self.max_size} bytes)"
        return None

    def _over(self) -> bool:
        return self.max_size is not None and self._used > self.max_size

    def _schedule(self) -> None:
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True  # writes during a pass: look again when it ends
            return
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.evict()
            except Exception:
                log.exception("eviction pass failed")
                return
            if not (self._again and self._over() and not self._saturated):
                return

    async def idle(self) -> None:
        """Wait until no eviction pass is running or pending (tests, CLI)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # -- gc and verify (node/cache/upkeep.py) -----------------------------------

    async def gc(self, grace: float = GRACE) -> GcReport:
        """Remove what nothing refers to, then enforce the cap."""
        return await self.upkeep.gc(grace)

    async def verify(self, repair: bool = True) -> VerifyReport:
        """Re-hash every blob; with `repair`, refetch every bad file (peers, then upstreams)."""
        return await self.upkeep.verify(repair)

    # -- pins --------------------------------------------------------------------

    async def pins(self) -> list[dict[str, Any]]:
        """Every pin with what it currently holds in the store."""
        out = []
        for pattern, created in await self.index.pins():
            blobs, size = await self.index.pin_usage(pattern)
            out.append({"pattern": pattern, "created_at": created, "blobs": blobs, "bytes": size})
        return out

    async def pin(self, pattern: str) -> bool:
        """Add a pin; False if it was there. ValueError unless it is one path pattern."""
        pattern = normalize_pattern(pattern)
        added = await self.index.add_pin(pattern, self.clock())
        await self._pinned_matcher()
        return added

    async def unpin(self, pattern: str) -> bool:
        removed = await self.index.remove_pin(normalize_pattern(pattern))
        await self._pinned_matcher()
        return removed

    async def _pinned_matcher(self) -> Callable[[str], bool]:
        globs = self._pin_globs = ",".join(p for p, _ in await self.index.pins())

        @functools.lru_cache(maxsize=4096)
        def pinned(module: str) -> bool:
            return bool(globs) and match_prefix_patterns(globs, module)

        return pinned

    # -- eviction ----------------------------------------------------------------

    async def usage(self) -> dict[str, Any]:
        return {"used": (await self.index.totals()).bytes, "max_size": self.max_size}

    async def evict(self) -> EvictReport:
        """One pass: if over the cap, remove the lowest-scored unpinned blobs."""
        async with self._lock:
            started = time.time()  # file times are wall-clock, whatever self.clock is
            await self.index.flush_access()  # hits buffered in memory count too
            used = self._used = (await self.index.totals()).bytes
            report = EvictReport(self.max_size, used, used)
            if self.max_size is None or used <= self.max_size:
                return report
            target = int(self.max_size * LOW_WATER)
            pinned = await self._pinned_matcher()
            while used > target:
                victims, more = await self._round(used - target, pinned)
                if not victims:
                    break
                freed = await self._remove(victims, started)
                report.evicted_blobs += len(victims)
                report.evicted_files += sum(len(b.files) for b in victims)
                report.evicted_bytes += freed
                before, used = used, (await self.index.totals()).bytes
                if not more or used >= before:
                    break
            report.used_after = self._used = used
            self._m_files.inc(report.evicted_files)
            self._m_bytes.inc(report.evicted_bytes)
            if used > self.max_size:
                report.pinned_over_cap = self._saturated = True
                log.warning(
                    "pinned modules alone take %d bytes, over max_size %d: nothing else is kept", used, self.max_size
                )
            log.info(
                "evicted %d files (%d bytes): store %d -> %d bytes of max %d",
                report.evicted_files,
                report.evicted_bytes,
                report.used_before,
                used,
                self.max_size,
            )
            return report

    async def _round(self, need: int, pinned: Callable[[str], bool]) -> tuple[list[BlobCandidate], bool]:
        """The lowest-scored blobs freeing `need` bytes, from one scan of the index a batch
        at a time; and whether more rounds may be needed (the round hit its limit)."""
        heap = VictimHeap(need, ROUND)
        now = self.clock()
        async for batch in self.index.blob_batches(BATCH):
            rows = await self.index.usage_between(batch[0][0], batch[-1][0])
            for blob in candidates(rows, pinned, now, self.half_life):
                heap.offer(blob)
        return heap.victims(), heap.truncated

    async def _remove(self, victims: Sequence[BlobCandidate], started: float) -> int:
        """Index rows first, then the blobs no row references any more; returns bytes freed."""
        keys = [f for b in victims for f in b.files]
        await self.index.delete_entries(keys)
        for b in victims:
            for module, version, kind in b.files:
                self.proxy.forget(ModRequest(module, version, cast(Kind, kind)))
        return await self._unlink_unreferenced([b.sha256 for b in victims], started)

    async def _unlink_unreferenced(self, shas: Sequence[str], started: float) -> int:
        """Delete the blobs no row references, unless one was (re)written after `started`:
        a download of identical bytes may have just committed it and be about to index
        it. gc collects it later if it stays unreferenced. Returns the bytes freed."""
        referenced = await self.index.referenced(shas)
        gone = [s for s in shas if s not in referenced]
        return await asyncio.to_thread(self.store.delete_unless_newer, gone, started) if gone else 0
