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
  write does not start another pass). Rows are deleted before their blob, so no
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

The command line and the `/_admin/` endpoints are in `storage_cli.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import Counter, Gauge

from node.cache.index import Entry, Index, Usage
from node.cache.protocol import Kind, ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.store import BlobStore
from node.errors import ModmeshError
from node.golang import dirhash, modzip
from node.golang.patterns import match_prefix_patterns
from node.metrics import Metrics

log = logging.getLogger(__name__)

#: Popularity halves for every this many seconds without an access.
HALF_LIFE = 3 * 86400.0
#: Size is a tie-breaker, not a reason to drop what is used: below SIZE_SCALE it
#: hardly matters, and above it each doubling of size weighs 1/SIZE_WEIGHT of a
#: doubling of hits, so a 10 MB zip hit a few times outlives a 2 kB one used once.
SIZE_SCALE = 64 * 1024
SIZE_WEIGHT = 8.0
#: An eviction pass stops at this fraction of the cap.
LOW_WATER = 0.95
#: Orphan blobs and temp files younger than this are left alone: a running node
#: may be about to index them or still be writing them.
GRACE = 15 * 60.0


# ---- policy (pure) -------------------------------------------------------------


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


# ---- reports ---------------------------------------------------------------------


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
        self._m_corrupt = Counter("modmesh_verify_problems", "Files verify found bad", ["reason"], registry=r)

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

    # -- pins --------------------------------------------------------------------

    async def pins(self) -> list[dict[str, Any]]:
        """Every pin with what it currently holds in the store."""
        by_module: dict[str, dict[str, int]] = defaultdict(dict)
        for r in await self.index.usage():
            by_module[r.module][r.sha256] = r.size
        out = []
        for pattern, created in await self.index.pins():
            held: dict[str, int] = {}
            for module, blobs in by_module.items():
                if match_prefix_patterns(pattern, module):
                    held.update(blobs)
            out.append({"pattern": pattern, "created_at": created, "blobs": len(held), "bytes": sum(held.values())})
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
        cache: dict[str, bool] = {}

        def pinned(module: str) -> bool:
            hit = cache.get(module)
            if hit is None:
                hit = cache[module] = bool(globs) and match_prefix_patterns(globs, module)
            return hit

        return pinned

    # -- eviction ----------------------------------------------------------------

    async def usage(self) -> dict[str, Any]:
        _, used = await self.index.totals()
        return {"used": used, "max_size": self.max_size}

    async def evict(self) -> EvictReport:
        """One pass: if over the cap, remove the lowest-scored unpinned blobs."""
        async with self._lock:
            started = time.time()  # file times are wall-clock, whatever self.clock is
            await self.index.flush_access()  # hits buffered in memory count too
            rows = await self.index.usage()
            blobs = candidates(rows, await self._pinned_matcher(), self.clock(), self.half_life)
            used = sum(b.size for b in blobs)
            self._used = used
            report = EvictReport(self.max_size, used, used)
            if self.max_size is None or used <= self.max_size:
                return report
            plan = plan_eviction(blobs, int(self.max_size * LOW_WATER))
            freed = await self._remove(plan.victims, started)
            report.evicted_blobs = len(plan.victims)
            report.evicted_files = sum(len(b.files) for b in plan.victims)
            report.evicted_bytes = freed
            report.used_after = self._used = used - freed
            self._m_files.inc(report.evicted_files)
            self._m_bytes.inc(freed)
            if plan.used_after > self.max_size:
                report.pinned_over_cap = self._saturated = True
                log.warning(
                    "pinned modules alone take %d bytes, over max_size %d: nothing else is kept",
                    plan.used_after,
                    self.max_size,
                )
            log.info(
                "evicted %d files (%d bytes): store %d -> %d bytes of max %d",
                report.evicted_files,
                freed,
                used,
                report.used_after,
                self.max_size,
            )
            return report

    async def _remove(self, victims: Sequence[BlobCandidate], started: float) -> int:
        """Index rows first, then the blobs no row references any more; returns bytes freed."""
        keys = [f for b in victims for f in b.files]
        await self.index.delete_entries(keys)
        for b in victims:
            for module, version, kind in b.files:
                self.proxy.forget(ModRequest(module, version, cast(Kind, kind)).key, b.sha256)
        freed = 0
        for b in victims:
            if await self._unlink_unreferenced(b.sha256, started):
                freed += b.size
        return freed

    async def _unlink_unreferenced(self, sha256: str, started: float) -> bool:
        """Delete a blob no row references, unless it was (re)written after `started`:
        a download of identical bytes may have just committed it and be about to
        index it (rename updates ctime). gc collects it later if it stays unreferenced."""
        if await self.index.is_referenced(sha256):
            return False
        path = self.store.path_for(sha256)
        try:
            st = path.stat()
            if max(st.st_mtime, st.st_ctime) >= started:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    # -- gc ----------------------------------------------------------------------

    async def gc(self, grace: float = GRACE) -> GcReport:
        """Remove what nothing refers to (see the module docstring), then enforce the cap."""
        report = GcReport()
        async with self._lock:
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

    # -- verify --------------------------------------------------------------------

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
            if reason is not None:  # the bytes are wrong, so wrong for every row
                found += [(_problem(e, reason), e, True) for e in rows]
                continue
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
        async with self._lock:
            found = [f for f in found if await self._still_indexed(f[1])]
            report.problems = [p for p, _, _ in found]
            for p in report.problems:
                self._m_corrupt.labels(p.reason.split(":")[0]).inc()
            if not repair:
                return report
            # Out of the index and out of memory first, so nothing serves the bad bytes.
            await self.index.delete_entries([(e.module, e.version, e.kind) for _, e, _ in found])
            for _, e, _ in found:
                self.proxy.forget(ModRequest(e.module, e.version, cast(Kind, e.kind)).key, e.sha256)
            for _, e, bad_bytes in found:
                if bad_bytes:
                    self.store.remove(e.sha256)
                else:
                    await self._unlink_unreferenced(e.sha256, math.inf)
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


def normalize_pattern(pattern: str) -> str:
    """One GOPRIVATE-style glob. Commas would make it several and a version
    (`m@v`) would never match a module path, so both are refused, not stored."""
    p = pattern.strip().removesuffix("/")
    if not p or any(c.isspace() or c in ",@" for c in p):
        raise ValueError(f"pin pattern {pattern!r}: want one module path pattern such as rsc.io/* or corp.example.com")
    return p


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
