"""The caching core: answer a `ModRequest` from the store, or fetch it once.

Follow one request: `app.goproxy` parses the path into a ModRequest and calls
`ModuleProxy.versioned` (info/mod/zip) or `ModuleProxy.meta` (list/latest).

versioned: memory/index hit -> `Served` (the app sends the blob with sendfile).
           miss -> one `Download` per key (single-flight, inflight.py): the
           upstream chain is walked, the body is written to a `Spool` (spool.py)
           while its sha256 (and for zips, the per-entry hashes for h1) are
           computed, verified, committed into the blob store and indexed. Every
           waiter gets the result; for a large zip waiters stream the spool as it
           grows (a `Transfer`), holding back its tail until verification passed
           (a client never completes bad bytes). When the store cannot take the
           file (disk full, max_size), it passes through to clients uncached.
meta:      list, latest and version queries: MetaAnswers (meta.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp

from node.cache import door, hot, verify
from node.cache.hits import SMALL_BLOB, Hits
from node.cache.index import Entry, Index, MetaEntry
from node.cache.inflight import CHUNK, Download, Transfer
from node.cache.integrity import Integrity
from node.cache.memory import CacheSizes, NegativeCache
from node.cache.meta import MetaAnswers
from node.cache.model import BlobVerifier, MetaAnswer, ProxySettings, Served
from node.cache.protocol import ModRequest, request_of
from node.cache.spool import MemoryBudget, Spool, storage_error_cause
from node.cache.store import BlobStore
from node.cache.upstream import Off, Source, Upstream, UpstreamChain
from node.errors import IntegrityError, ModmeshError, NotFound, StorageFull, UpstreamError
from node.golang.patterns import match_prefix_patterns
from node.hooks import Hooks
from node.metrics import Metrics

log = logging.getLogger(__name__)

FOREIGN = (
    "module private to another node of the mesh (its private patterns): not fetched by this node;"
    " add a [[route]] or `private` pattern for it here to fetch it"
)


class ModuleProxy:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        chain: UpstreamChain,
        metrics: Metrics,
        settings: ProxySettings,
        hooks: Hooks | None = None,
        verifier: BlobVerifier | None = None,
        clock: Callable[[], float] = time.time,
        routes: Sequence[tuple[str, UpstreamChain]] = (),
    ) -> None:
        self.store = store
        self.index = index
        self.chain = chain
        #: (GOPRIVATE-style pattern, chain): the first match serves a module instead of `chain`.
        self.routes = list(routes)
        self.metrics = metrics
        self.settings = settings
        self.hooks = hooks or Hooks()
        self.verifier = verifier
        self.clock = clock
        sizes = CacheSizes.split(settings.memory_cache)
        self.negative = NegativeCache(settings.negative_ttl, clock, sizes.negative)
        self._flights: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: `@v/list`, `@latest` and version queries (node/cache/meta.py).
        self.answers = MetaAnswers(
            index, store, metrics, settings, self.hooks, self.chain_for, self.negative, self, clock
        )
        self.passthrough_budget = MemoryBudget(settings.passthrough_memory)
        #: Blobs hashed before their first serve of a run; damaged ones quarantined.
        self.integrity = Integrity(store, index, metrics, clock, settings.check_on_serve)
        self.integrity.forget = self.forget
        #: Rows and small bodies of cached files: memory, or the store off the loop.
        self.hits = Hits(store, index, self.integrity, sizes)
        #: (module, size) -> why the store must not keep such a file, or None (storage limits).
        self.refuse_store: Callable[[str, int], str | None] = lambda module, size: None
        #: For modules private only by another mesh member's patterns (hooks.PrivateModules).
        self._foreign = UpstreamChain([Off("private", FOREIGN)])

    def chain_for(self, module: str) -> UpstreamChain:
        for pattern, chain in self.routes:
            if match_prefix_patterns(pattern, module):
                return chain
        if self.hooks.private.foreign(module):
            return self._foreign  # its name goes to no upstream from here
        return self.chain

    # ---- versioned files -------------------------------------------------

    async def versioned(self, req: ModRequest, local_only: bool = False) -> Served | Transfer:
        """A hit, a completed miss, or a Transfer the caller streams and then closes:
        a large zip still downloading, or a file the store could not take.

        `local_only` (a request from a peer node) never fetches: no forwarding loops.
        """
        served = await self.lookup(req)
        if served is not None and not (local_only and served.entry.unverified):
            self.count_hit(req, from_peer=local_only)
            return served
        if local_only:  # a peer gets only what the checksum database confirmed
            raise NotFound(f"{req.key} is not cached on this node")
        try:
            return await self._miss(req)
        except ModmeshError as e:
            raise self.integrity.explain(req.key, e) from None

    async def _miss(self, req: ModRequest) -> Served | Transfer:
        self.negative.check(req.key)
        dl = self._flights.get(req.key)
        if dl is None:
            dl = Download(req, self._spool(req))
            self._flights[req.key] = dl
            self._spawn(self._download(dl))
        else:
            self.metrics.coalesced.labels(req.kind).inc()
        self.hooks.accessed(req, "miss")
        threshold = self.settings.stream_threshold
        transfer: Transfer | None = Transfer(dl)  # claimed now: the bytes outlive the download for us
        try:
            await dl.wait_until(lambda: dl.written >= threshold and (dl.expected is None or dl.expected > threshold))
            if dl.finished:
                entry = dl.result.result()  # raises the flight's error, if any
                if dl.stored:
                    body = self.hits.body(req)
                    if body is None and entry.size <= SMALL_BLOB:  # it may be packed: no path
                        body = dl.spool.read(0, entry.size)
                    return Served(entry, None if body is not None else self.store.path_for(entry.sha256), body, "miss")
            streamed, transfer = transfer, None
            assert streamed is not None
            return streamed
        finally:
            if transfer is not None:
                transfer.close()

    async def fetch(self, req: ModRequest) -> tuple[Entry, bool]:
        """Fetch (or find) a versioned file and wait for all of it, for the operator
        tools: (entry, True if the store holds it now)."""
        res = await self.versioned(req)
        if isinstance(res, Served):
            return res.entry, True
        with res:
            entry = await asyncio.shield(res.dl.result)
            return entry, res.dl.stored

    async def lookup(self, req: ModRequest, row: bool = True) -> Served | None:
        """A hit from memory or the store (hits.py); None if the store does not hold the file."""
        return await self.hits.lookup(req, row)

    def count_hit(self, req: ModRequest, from_peer: bool) -> None:
        """The one rule for counting a hit, whichever path answered it: a client's use
        counts (the index's hits and last access, for eviction; the mesh's popularity);
        a peer's pull (the hop header) is no local use and counts for neither."""
        if from_peer:
            return
        self.index.touch(req.module, req.version, req.kind, self.clock())
        self.hooks.accessed(req, "hit")

    def memory_hit(self, req: ModRequest, from_peer: bool = False) -> Served | MetaAnswer | None:
        """A hit answerable from memory without waiting on anything (the fast path):
        a versioned file whose bytes are in memory, or a fresh list/latest. None otherwise."""
        if req.versioned:
            held = self.hits.in_memory(req)
            if held is None or (from_peer and held[0].unverified):
                return None
            entry, body = held
            self.count_hit(req, from_peer)
            return Served(entry, None, body, "hit")
        return self.answers.memory_hit(req)

    def hot_hit(self, path: str, from_peer: bool = False) -> tuple[ModRequest, bytes] | None:
        """The fast path's first try: the hot answer (hot.py) of the decoded request path,
        counted as a hit; None if memory holds none (or only one a peer must not get)."""
        record = self.hits.hot.get(path)
        if record is None or (from_peer and hot.unverified(record)):
            return None
        req = request_of(path)
        self.count_hit(req, from_peer)
        return req, record

    def sweep_memory(self) -> None:
        """Drop expired "not found" answers (asked again or not); report the caches' sizes."""
        self.negative.sweep()
        held = {
            "hot": self.hits.hot.bytes,
            "entries": self.hits.entries.bytes,
            "meta": self.answers.cache.bytes,
            "negative": self.negative.bytes,
        }
        for name, n in held.items():
            self.metrics.memory_cache_bytes.labels(name).set(n)

    def forget(self, req: ModRequest) -> None:
        """Drop in-memory copies of a row (and of its file's bytes) that storage.py
        evicted or found corrupt, so the next request reads the index and disk again."""
        self.hits.forget(req)

    def _spool(self, req: ModRequest, passing: bool = True) -> Spool:
        refused = functools.partial(self._store_refused, req, passing)
        return Spool(self.store, self.passthrough_budget, refused, packable=req.kind != "zip")

    def _store_refused(self, req: ModRequest, passing: bool, cause: str) -> None:
        """The store cannot take `req`'s file: health says so, and a download that passes
        it through to clients warns once (not once per client)."""
        self.store.status.refused(cause, f"{req.module}@{req.version}", self.clock())
        if passing:
            log.warning(
                "store cannot take %s %s .%s (%s): passing it through uncached",
                req.module,
                req.version,
                req.kind,
                cause,
            )

    async def _download(self, dl: Download) -> None:
        req = dl.req
        try:
            if self.verifier is not None and req.kind != "info":
                self.verifier.start_lookup(req.module, req.version)  # overlaps the download
            consume = self._consume_zip if req.kind == "zip" else self._consume_small
            h1, up, verified = await self._from_peers(dl, consume)
            if up is None:
                h1, up = await self.chain_for(req.module).fetch(
                    req.upstream_path,
                    lambda up, resp: consume(dl, up, resp),
                    small=req.kind != "zip",
                    may_fall_through=dl.abandon,
                )
                verified = await self._verify(req, h1)
            entry = await self._keep(dl, h1, up.name, verified)
            dl.source = up.name
            dl.result.set_result(entry)
            if dl.stored:
                self.integrity.stored(entry)
                self.hooks.stored(entry)
            else:
                self.metrics.passthrough_files.labels(dl.spool.passthrough or "unknown").inc()
                self.metrics.passthrough_bytes.inc(entry.size)
        except NotFound as e:
            self.negative.remember(req.key, e)
            dl.result.set_exception(e)
        except ModmeshError as e:
            if isinstance(e, IntegrityError):
                self.metrics.rejected.labels(req.kind).inc()
                log.warning("refused %s: %s", req.key, e)
            elif dl.committed:  # clients were receiving it: they are cut off now
                log.warning("download of %s failed while clients were receiving it: %s", req.key, e)
            dl.result.set_exception(e)
        except asyncio.CancelledError:
            dl.result.set_exception(UpstreamError("node is shutting down"))
            raise
        except Exception as e:  # a bug: fail the waiters, do not wedge the key
            log.exception("download of %s failed", req.key)
            dl.result.set_exception(ModmeshError(f"internal error fetching {req.key}: {type(e).__name__}"))
        finally:
            self._flights.pop(req.key, None)
            dl.spool.release()
            dl.notify()
            # Waiters retrieve the exception; mark it seen so asyncio does not warn.
            if dl.result.done() and not dl.result.cancelled():
                dl.result.exception()

    async def _keep(self, dl: Download, h1: str | None, origin: str, verified: bool = True) -> Entry:
        """Commit verified bytes into the store and the index; when the store cannot
        take them, the entry describes bytes only the download holds (`dl.stored` False)."""
        req, spool = dl.req, dl.spool
        refusal = self.refuse_store(req.module, spool.size)
        if refusal is not None:
            spool.refuse(refusal)
        blob = await spool.commit()
        entry = Entry(
            req.module,
            req.version,
            req.kind,
            spool.sha256,
            spool.size,
            h1,
            origin,
            self.clock(),
            unverified=not verified,
        )
        if blob is None:
            dl.stored = False
            return entry
        try:
            entry = await self.index.put(entry)
        except Exception as e:
            cause = storage_error_cause(e)
            if cause is None:
                raise
            dl.stored = False
            spool.passed_through(cause)
            with contextlib.suppress(Exception):
                if not await self.index.is_referenced(blob.sha256):
                    await asyncio.to_thread(self.store.remove, blob.sha256)
            return entry
        if self.store.status.stored():
            log.info("the store takes files again (%s %s .%s stored)", req.module, req.version, req.kind)
        self.hits.remember(req, entry, spool.read(0, entry.size) if entry.size <= SMALL_BLOB else None)
        return entry

    async def _verify(self, req: ModRequest, h1: str | None, require: bool = False) -> bool:
        """Whether the checksum database confirmed the file (True when nothing is checked)."""
        if self.verifier is not None and h1 is not None:
            return await self.verifier.verify(req.module, req.version, req.kind, h1, require)
        return True

    async def _from_peers(
        self, dl: Download, consume: Callable[[Download, Source, aiohttp.ClientResponse], Awaitable[str | None]]
    ) -> tuple[str | None, Source | None, bool]:
        """Ask the mesh's peers first; every byte is verified exactly as from an upstream,
        and a peer that fails (or lies) is reported and skipped."""
        peers = self.hooks.peers
        if peers is None:
            return None, None, True
        req = dl.req
        for cand in peers.peers_for(req):
            peer = cand.upstream
            try:
                h1 = await peer.fetch(req.upstream_path, functools.partial(consume, dl, peer), small=req.kind != "zip")
                if (cand.sha256 and cand.sha256 != dl.spool.sha256) or (cand.h1 and h1 and cand.h1 != h1):
                    raise IntegrityError(
                        f"peer {peer.name} sent bytes for {req.key} that differ from what it advertised"
                    )
                verified = await self._verify(req, h1)
            except ModmeshError as e:
                peers.report(peer, req, e)
                if not dl.abandon():  # a client already has bytes from this peer
                    raise
                continue
            peers.report(peer, req, None)
            return h1, peer, verified
        return None, None, True

    async def _consume_small(self, dl: Download, up: Source, resp: aiohttp.ClientResponse) -> str | None:
        limit = verify.MAX_INFO if dl.req.kind == "info" else verify.MAX_MOD
        body = await door.read_bounded(resp, limit, dl.req)
        self.metrics.upstream_bytes.labels(up.name).inc(len(body))
        return door.take_small(dl, body)

    async def _consume_zip(self, dl: Download, up: Source, resp: aiohttp.ClientResponse) -> str:
        encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
        received = self.metrics.upstream_bytes.labels(up.name)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in resp.content.iter_chunked(CHUNK):
                received.inc(len(chunk))
                yield chunk

        origin = "the upstream" if isinstance(up, Upstream) and not up.label else up.name
        return await door.take_zip(dl, origin, chunks(), None if encoded else resp.content_length)

    async def admit(
        self, req: ModRequest, origin: str, chunks: AsyncIterable[bytes], length: int | None = None
    ) -> tuple[Entry, bool]:
        """Take a versioned file from somewhere other than an upstream (an import, a
        bundle): the same checks, the same checksum-database verification, the same
        atomic commit. Returns (entry, True), or (existing entry, False) when cached.
        StorageFull when the store cannot take it."""
        served = await self.lookup(req)
        if served is not None:
            return served.entry, False
        dl = Download(req, self._spool(req, passing=False))
        try:
            if req.kind == "zip":
                h1: str | None = await door.take_zip(dl, origin, chunks, length)
            else:
                body = b"".join([c async for c in chunks])
                h1 = door.take_small(dl, body)
            await self._verify(req, h1, require=True)  # a bundle or a peer must bring its proof
            entry = await self._keep(dl, h1, origin)
            if not dl.stored:
                cause = dl.spool.passthrough or "the store refused it"
                raise StorageFull(f"{req.key} was not stored: {cause}", cause=cause)
        except IntegrityError:
            self.metrics.rejected.labels(req.kind).inc()
            raise
        finally:
            dl.spool.release()
            dl.result.cancel()
        self.negative.forget(req.key)
        self.hooks.stored(entry)
        return entry, True

    # ---- list, latest and version queries (node/cache/meta.py) ------------

    async def meta(self, req: ModRequest, local_only: bool = False) -> MetaAnswer:
        return await self.answers.meta(req, local_only)

    async def admit_meta(self, req: ModRequest, origin: str, body: bytes, fetched_at: float) -> tuple[MetaEntry, bool]:
        """Take an `@v/list` / `@latest` answer from an import (see MetaAnswers.admit)."""
        return await self.answers.admit(req, origin, body, fetched_at)

    # ---- lifecycle -------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel in-flight fetches; their temp files are removed as they unwind."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.answers.aclose()
        await self.integrity.aclose()
        self.hits.reads.close()
