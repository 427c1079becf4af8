"""Keeping a store honest: gc (what no index row explains) and verify (re-hash every
blob, repair what is bad by fetching it again). StorageManager runs them under its
deletion lock. Both walk the index and the store a batch at a time, so their memory
does not grow with the store (tests/test_scale.py measures it)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from prometheus_client import Counter

from node.cache.eviction import EvictReport
from node.cache.index import Entry, Index
from node.cache.protocol import Kind, ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.store import BlobStat, BlobStore
from node.errors import ModmeshError
from node.golang import dirhash, modzip

log = logging.getLogger(__name__)

#: Orphan blobs and temp files younger than this are left alone: a running node
#: may be about to index them or still be writing them.
GRACE = 15 * 60.0
#: Blobs per batch read from the index and the store; verify's batches are smaller
#: (their bytes are hashed in one thread call).
BATCH = 1000
VERIFY_BATCH = 256


@dataclass
class GcReport:
    dangling_rows: int = 0
    orphan_blobs: int = 0
    orphan_bytes: int = 0
    young_orphans: int = 0
    tmp_files: int = 0
    tmp_bytes: int = 0
    meta_rows: int = 0
    evict: EvictReport | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Problem:
    module: str
    version: str
    kind: str
    sha256: str
    reason: str
    #: found (not repaired), repaired, unrepairable
    status: str = "found"
    detail: str = ""


@dataclass
class VerifyReport:
    blobs: int = 0
    bytes: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    orphans_checked: int = 0
    orphans_corrupt: int = 0
    #: The index's running totals had drifted from its rows and were counted again.
    totals_recounted: bool = False

    @property
    def failed(self) -> list[Problem]:
        return [p for p in self.problems if p.status != "repaired"]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["repaired"] = sum(p.status == "repaired" for p in self.problems)
        d["unrepaired"] = len(self.failed)
        return d


class Upkeep:
    """gc and verify for one node's store."""

    def __init__(
        self,
        store: BlobStore,
        index: Index,
        proxy: ModuleProxy,
        lock: asyncio.Lock,
        evict: Callable[[], Awaitable[EvictReport]],
        unlink_unreferenced: Callable[[Sequence[str], float], Awaitable[int]],
        corrupt: Counter,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.index = index
        self.proxy = proxy
        self.lock = lock
        self.evict = evict
        self.unlink_unreferenced = unlink_unreferenced
        self.corrupt = corrupt
        self.clock = clock

    async def gc(self, grace: float = GRACE) -> GcReport:
        """Remove what nothing refers to (see the module docstring), then enforce the cap.
        The index and the store are read a batch at a time."""
        report = GcReport()
        async with self.lock:
            now = time.time()  # compared with file times
            async for batch in self.index.blob_batches(BATCH):
                shas = [sha for sha, _ in batch]
                present = await asyncio.to_thread(self.store.sizes, shas)
                gone = [sha for sha in shas if sha not in present]
                if not gone:
                    continue
                dangling = await self.index.keys_of(gone)
                await self.index.delete_entries(dangling)
                for m, v, k in dangling:
                    self.proxy.forget(ModRequest(m, v, cast(Kind, k)))
                report.dangling_rows += len(dangling)
            blobs = self.store.batches(BATCH)
            while on_disk := await asyncio.to_thread(_next, blobs):
                referenced = await self.index.referenced([b.sha256 for b in on_disk])
                orphans = [b for b in on_disk if b.sha256 not in referenced]
                old = [b for b in orphans if b.written <= now - grace]
                report.young_orphans += len(orphans) - len(old)
                if old:
                    freed = await asyncio.to_thread(
                        self.store.delete_unless_newer, [b.sha256 for b in old], now - grace, False
                    )
                    report.orphan_blobs += len(old)
                    report.orphan_bytes += freed
            for path in list(self.store.tmp_root.rglob("*")):
                try:
                    st = path.stat()
                    if path.is_file() and st.st_mtime <= now - grace:
                        path.unlink()
                        report.tmp_files += 1
                        report.tmp_bytes += st.st_size
                except FileNotFoundError:
                    continue
            s = self.proxy.settings
            expired = self.clock() - s.meta_ttl - s.meta_stale_window
            report.meta_rows = await self.index.delete_stale_meta(expired)
        report.evict = await self.evict()
        return report

    async def verify(self, repair: bool = True) -> VerifyReport:
        """Re-hash every blob; with `repair`, refetch every bad file (peers, then upstreams).

        The scan takes no lock (hashing a big store takes long, and eviction must go
        on meanwhile); what it found is checked again under the lock, so a file
        evicted during the scan is neither reported missing nor fetched back. It reads
        the index and the store a batch at a time: memory holds one batch and the
        problems found, whatever the size of the store.
        """
        report = VerifyReport()
        found: list[tuple[Problem, Entry, bool]] = []  # (problem, row, are the bytes bad?)
        async for batch in self.index.blob_batches(VERIFY_BATCH):
            rows = await self.index.entries_between(batch[0][0], batch[-1][0])
            checked = await asyncio.to_thread(_check_batch, self.store, batch, rows)
            good: list[str] = []
            for sha, (reason, size, row_problems) in checked.items():
                report.blobs += 1
                report.bytes += size
                self.proxy.metrics.blobs_checked.labels("verify").inc()
                mine = [e for e in rows if e.sha256 == sha]
                if reason is not None:  # the bytes are wrong, so wrong for every row
                    found += [(_problem(e, reason), e, True) for e in mine]
                    continue
                good.append(sha)
                found += [(_problem(e, why), e, False) for e, why in row_problems]
            report.files += len(rows)
            await self.index.mark_checked_many(good, self.clock())
        blobs = self.store.batches(VERIFY_BATCH)
        while on_disk := await asyncio.to_thread(_next, blobs):
            referenced = await self.index.referenced([b.sha256 for b in on_disk])
            orphans = [(b.sha256, b.size) for b in on_disk if b.sha256 not in referenced]
            report.orphans_checked += len(orphans)
            checked = await asyncio.to_thread(_check_batch, self.store, orphans, [])
            # Blobs appear whole (rename): one that does not hash to its name rotted; nothing refers to it.
            corrupt = [sha for sha, (reason, _, _) in checked.items() if reason is not None]
            report.orphans_corrupt += len(corrupt)
            if corrupt:
                await asyncio.to_thread(self.store.delete_unless_newer, corrupt, math.inf)
        report.totals_recounted = await self.index.recount()
        async with self.lock:
            found = [f for f in found if await self._still_indexed(f[1])]
            report.problems = [p for p, _, _ in found]
            for p in report.problems:
                self.corrupt.labels(p.reason.split(":")[0]).inc()
            bad_blobs = {e.sha256: p.reason for p, e, bad in found if bad}
            if not repair:
                # Report only, but never serve them: each is checked (and quarantined,
                # and fetched again) before its next serve.
                for _, e, bad in found:
                    if bad:
                        self.proxy.forget(ModRequest(e.module, e.version, cast(Kind, e.kind)))
                for sha in bad_blobs:
                    await self.index.mark_unchecked(sha)
                return report
            for sha, reason in bad_blobs.items():
                await self.proxy.integrity.quarantine(sha, reason, "verify")
            # Out of the index and out of memory first, so nothing serves the bad bytes.
            rows = [e for _, e, bad in found if not bad]
            await self.index.delete_entries([(e.module, e.version, e.kind) for e in rows])
            for e in rows:
                self.proxy.forget(ModRequest(e.module, e.version, cast(Kind, e.kind)))
            await self.unlink_unreferenced(sorted({e.sha256 for e in rows}), math.inf)
        for p, e, _ in found:
            await self._refetch(p, e)
        return report

    async def _still_indexed(self, e: Entry) -> bool:
        now = await self.index.get(e.module, e.version, e.kind)
        return now is not None and now.sha256 == e.sha256

    async def _refetch(self, p: Problem, old: Entry) -> None:
        req = ModRequest(old.module, old.version, cast(Kind, old.kind))
        try:
            entry, stored = await self.proxy.fetch(req)
            if not stored:
                raise ModmeshError(f"refetched, but the store could not take it: {self.store.status.health()}")
        except ModmeshError as e:
            p.status, p.detail = "unrepairable", str(e)
            log.warning("verify: cannot repair %s: %s", req.key, e)
            return
        if old.h1 and entry.h1 != old.h1:
            # Sound bytes, but not the ones clients' go.sum files record.
            p.status = "unrepairable"
            p.detail = f"refetched from {entry.source} with h1 {entry.h1}, the store had {old.h1}"
            log.warning("verify: %s: %s", req.key, p.detail)
            return
        p.status, p.detail = "repaired", f"refetched from {entry.source}"
        log.info("verify: repaired %s from %s", req.key, entry.source)


def _problem(e: Entry, reason: str) -> Problem:
    return Problem(e.module, e.version, e.kind, e.sha256, reason)


def _check_batch(
    store: BlobStore, blobs: Sequence[tuple[str, int]], rows: Sequence[Entry]
) -> dict[str, tuple[str | None, int, list[tuple[Entry, str]]]]:
    """In a thread: sha256 -> (why its bytes are bad or None, bytes read, the rows that
    do not describe the sound bytes, with why)."""
    out: dict[str, tuple[str | None, int, list[tuple[Entry, str]]]] = {}
    for sha, _ in blobs:
        try:
            with store.open_blob(sha) as f:
                got, size = _digest(f)
        except FileNotFoundError:
            out[sha] = ("missing", 0, [])
            continue
        except OSError as err:
            out[sha] = (f"unreadable: {err.strerror or err}", 0, [])
            continue
        if got != sha:
            out[sha] = (f"sha256 mismatch: the bytes on disk hash to {got}", size, [])
            continue
        problems: list[tuple[Entry, str]] = []
        for e in rows:
            if e.sha256 == sha and (why := _check_row(store, e, size)) is not None:
                problems.append((e, why))
        out[sha] = (None, size, problems)
    return out


def _digest(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _next(it: Iterator[list[BlobStat]]) -> list[BlobStat]:
    return next(it, [])


def _check_row(store: BlobStore, e: Entry, size: int) -> str | None:
    """The row's size and h1 against a blob already known to match its name."""
    if e.size != size:
        return f"size mismatch: index says {e.size}, blob has {size}"
    if e.h1 is None or e.kind == "info":
        return None
    try:
        with store.open_blob(e.sha256) as f:
            h1 = modzip.h1_zip_file(f) if e.kind == "zip" else dirhash.h1_gomod(f.read())
    except (OSError, ValueError) as err:
        return f"h1 unreadable: {err}"
    return None if h1 == e.h1 else f"h1 mismatch: index says {e.h1}, blob hashes to {h1}"
