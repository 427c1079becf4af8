"""Files cached while the checksum database could not confirm them, checked again.

With `sumdb_verify = "sumdb"` (the default) a public `.zip`/`.mod` whose record the
database cannot give (it does not answer: a firewall, an outage; or it has no record)
is still cached and served, marked *unverified* in the index: the go command verifies
what it downloads against go.sum or the database itself, so refusing it would only
break builds. Such files are never offered to peers or exported. This loop asks the
database again, soon after a failure and then less often (5 s doubling to 5 min), and
at once when a check elsewhere shows the database answers again:

- confirmed: the mark is cleared and the row enters the change log (peers see it);
- mismatch: the file is deleted (the database's check logged both hashes) and counted;
- still no answer: tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from node.cache.index import Entry, Index
from node.cache.protocol import Kind, ModRequest
from node.cache.store import BlobStore
from node.hooks import Hooks

if TYPE_CHECKING:
    from node.cache.proxy import ModuleProxy
    from node.sumdb.databases import ChecksumDatabases

log = logging.getLogger(__name__)

#: Seconds between attempts while the database does not answer.
BACKOFF = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)
BATCH = 500


class Reverifier:
    def __init__(
        self,
        index: Index,
        sumdbs: ChecksumDatabases,
        proxy: ModuleProxy,
        store: BlobStore,
        hooks: Hooks,
        registry: CollectorRegistry,
    ) -> None:
        self.index = index
        self.sumdbs = sumdbs
        self.proxy = proxy
        self.store = store
        self.hooks = hooks
        #: Unverified files in the store (for /healthz, doctor and the dashboard).
        self.pending = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._m_pending = Gauge(
            "modmesh_unverified_files",
            "Cached .zip/.mod files the checksum database has not confirmed yet",
            registry=registry,
        )
        self._m_results = Counter(
            "modmesh_reverified", "Unverified files checked again, by result", ["result"], registry=registry
        )

    async def start(self) -> None:
        self.pending = await self.index.count_unverified()
        self._m_pending.set(self.pending)
        self.sumdbs.answered.append(self.kick)
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kick(self) -> None:
        """The database answered a check: look at what waits for it now."""
        if self.pending:
            self._wake.set()

    def stored(self, entry: Entry) -> None:
        """StoreObserver: an unverified file was cached."""
        if entry.unverified:
            self.pending += 1
            self._m_pending.set(self.pending)
            if self.pending == 1:
                self._wake.set()  # the loop was idle: start the schedule

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self.pending:
                await self._wake.wait()
                failures = 0
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BACKOFF[min(failures, len(BACKOFF) - 1)])
            self._wake.clear()
            try:
                answered = await self.round()
            except Exception:
                log.exception("checking unverified files again failed")
                answered = False
            failures = 0 if answered else failures + 1

    async def round(self) -> bool:
        """Check every unverified file once; False when the database did not answer."""
        answered = True
        for e in await self.index.unverified(BATCH):
            if e.h1 is None:
                continue
            result = await self.sumdbs.recheck(e.module, e.version, e.kind, e.h1)
            self._m_results.labels(result).inc()
            if result == "unreachable":
                answered = False
                break
            if result == "verified":
                fresh = await self.index.mark_verified(e)
                self.proxy.forget(ModRequest(e.module, e.version, _kind(e.kind)))
                if fresh is not None:
                    log.info("checksum database confirmed %s@%s .%s", e.module, e.version, e.kind)
                    self.hooks.stored(fresh)
            elif result == "mismatch":
                await self._drop(e)
        self.pending = await self.index.count_unverified()
        self._m_pending.set(self.pending)
        return answered

    async def _drop(self, e: Entry) -> None:
        """A forged or wrong file: out of the index, memory and (if nothing else uses it) disk."""
        await self.index.delete_entries([(e.module, e.version, e.kind)])
        self.proxy.forget(ModRequest(e.module, e.version, _kind(e.kind)))
        if not await self.index.is_referenced(e.sha256):
            await asyncio.to_thread(self.store.remove, e.sha256)
        log.error(
            "deleted %s@%s .%s from the store: its h1 %s is not the checksum database's",
            e.module,
            e.version,
            e.kind,
            e.h1,
        )


def _kind(kind: str) -> Kind:
    return cast(Kind, kind)
