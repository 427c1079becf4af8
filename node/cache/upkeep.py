"""Keeping a store honest: gc (what no index row explains) and verify (re-hash every
blob, repair what is bad by fetching it again). StorageManager runs them under its
deletion lock."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import Counter

from node.cache.eviction import EvictReport
from node.cache.index import Entry, Index, Usage
from node.cache.protocol import Kind, ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.store import BlobStore
from node.errors import ModmeshError
from node.golang import dirhash, modzip

log = logging.getLogger(__name__)

#: Orphan blobs and temp files younger than this are left alone: a running node
#: may be about to index them or still be writing them.
GRACE = 15 * 60.0


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
        unlink_unreferenced: Callable[[str, float], Awaitable[bool]],
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
        """Remove what nothing refers to (see the module docstring), then enforce the cap."""
        report = GcReport()
        async with self.lock:
            now = time.time()  # compared with file times
            referenced: dict[str, list[Usage]] = defaultdict(list)
            for r in await self.index.usage():
                referenced[r.sha256].append(r)
            dangling = [
                (r.module, r.version, r.kind)
                for sha, rs in referenced.items()
                if not self.store.path_for(sha).is_file()
                for r in rs
            ]
            if dangling:
                await self.index.delete_entries(dangling)
                for m, v, k in dangling:
                    self.proxy.forget(ModRequest(m, v, cast(Kind, k)).key)
            report.dangling_rows = len(dangling)
            for path in iter_blobs(self.store):
                if path.name in referenced:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime > now - grace:
                    report.young_orphans += 1
                    continue
                if await self.index.is_referenced(path.name):  # indexed meanwhile
                    continue
                path.unlink(missing_ok=True)
                report.orphan_blobs += 1
                report.orphan_bytes += st.st_size
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
        evicted during the scan is neither reported missing nor fetched back.
        """
        report = VerifyReport()
        by_sha: dict[str, list[Entry]] = defaultdict(list)
        serial = 0
        while batch := await self.index.changes_since(serial, 5000):
            for e in batch:
                by_sha[e.sha256].append(e)
            serial = batch[-1].serial
        report.files = sum(len(v) for v in by_sha.values())
        found: list[tuple[Problem, Entry, bool]] = []  # (problem, row, are the bytes bad?)
        for sha, rows in by_sha.items():
            path = self.store.path_for(sha)
            reason, size = await _check_blob(path, sha)
            report.blobs += 1
            report.bytes += size
            self.proxy.metrics.blobs_checked.labels("verify").inc()
            if reason is not None:  # the bytes are wrong, so wrong for every row
                found += [(_problem(e, reason), e, True) for e in rows]
                continue
            await self.index.mark_checked(sha, self.clock())
            for e in rows:  # the bytes are whole; does the row describe them?
                why = await _check_row(path, e, size)
                if why is not None:
                    found.append((_problem(e, why), e, False))
        for path in iter_blobs(self.store):
            if path.name in by_sha:
                continue
            report.orphans_checked += 1
            reason, _ = await _check_blob(path, path.name)
            if reason is not None:  # blobs appear whole (rename): this one rotted; nothing refers to it
                report.orphans_corrupt += 1
                path.unlink(missing_ok=True)
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
                        self.proxy.forget(ModRequest(e.module, e.version, cast(Kind, e.kind)).key, e.sha256)
                for sha in bad_blobs:
                    await self.index.mark_unchecked(sha)
                return report
            for sha, reason in bad_blobs.items():
                await self.proxy.integrity.quarantine(sha, reason, "verify")
            # Out of the index and out of memory first, so nothing serves the bad bytes.
            rows = [e for _, e, bad in found if not bad]
            await self.index.delete_entries([(e.module, e.version, e.kind) for e in rows])
            for e in rows:
                self.proxy.forget(ModRequest(e.module, e.version, cast(Kind, e.kind)).key, e.sha256)
                await self.unlink_unreferenced(e.sha256, math.inf)
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


def iter_blobs(store: BlobStore) -> Iterator[Path]:
    """Every file under blobs/<aa>/ (whatever its name)."""
    if not store.blob_dir.is_dir():
        return
    for sub in store.blob_dir.iterdir():
        if sub.is_dir():
            yield from (p for p in sub.iterdir() if p.is_file())


def _problem(e: Entry, reason: str) -> Problem:
    return Problem(e.module, e.version, e.kind, e.sha256, reason)


async def _check_blob(path: Path, sha256: str) -> tuple[str | None, int]:
    """(None, size) for a whole blob, else (reason, bytes read)."""

    def digest() -> tuple[str, int]:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size

    try:
        got, size = await asyncio.to_thread(digest)
    except FileNotFoundError:
        return "missing", 0
    except OSError as e:
        return f"unreadable: {e.strerror}", 0
    if got != sha256:
        return f"sha256 mismatch: the bytes on disk hash to {got}", size
    return None, size


async def _check_row(path: Path, e: Entry, size: int) -> str | None:
    """The row's size and h1 against a blob already known to match its name."""
    if e.size != size:
        return f"size mismatch: index says {e.size}, blob has {size}"
    if e.h1 is None or e.kind == "info":
        return None
    try:
        if e.kind == "zip":
            h1 = await asyncio.to_thread(modzip.h1_zip, path)
        else:
            h1 = dirhash.h1_gomod(await asyncio.to_thread(path.read_bytes))
    except (OSError, ValueError) as err:
        return f"h1 unreadable: {err}"
    return None if h1 == e.h1 else f"h1 mismatch: index says {e.h1}, blob hashes to {h1}"
