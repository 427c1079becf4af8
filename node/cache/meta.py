"""`@v/list`, `@latest` and version queries: small answers that change over time.

Fresh for `meta_ttl`, then served while a background refresh runs
(`meta_stale_window`), then refreshed before answering. When every upstream fails:
the cached answer (marked stale), a peer's, or (list, latest) one built from the
versions the store holds. A fresh list is merged with every version seen before:
lists never shrink. A query's answer is also kept as the `.info` of the version it
resolved to.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Protocol

import aiohttp

from node.cache import door, verify
from node.cache.index import Entry, Index, MetaEntry
from node.cache.memory import LRU, CacheSizes, NegativeCache, meta_size
from node.cache.model import MetaAnswer, ProxySettings, Served
from node.cache.protocol import ModRequest
from node.cache.spool import storage_error_cause
from node.cache.store import BlobStore
from node.cache.upstream import Source, UpstreamChain
from node.errors import ModmeshError, NotFound
from node.flights import Flights
from node.golang import pseudo
from node.hooks import Hooks
from node.metrics import Metrics

log = logging.getLogger(__name__)


class VersionedFiles(Protocol):
    """What the meta answers need of the versioned files (ModuleProxy)."""

    async def lookup(self, req: ModRequest) -> Served | None: ...

    async def admit(
        self, req: ModRequest, origin: str, chunks: AsyncIterable[bytes], length: int | None = None
    ) -> tuple[Entry, bool]: ...


class MetaAnswers:
    def __init__(
        self,
        index: Index,
        store: BlobStore,
        metrics: Metrics,
        settings: ProxySettings,
        hooks: Hooks,
        chain_for: Callable[[str], UpstreamChain],
        negative: NegativeCache,
        files: VersionedFiles,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.hooks = hooks
        self.chain_for = chain_for
        self.negative = negative
        self.files = files
        self.clock = clock
        self.cache: LRU[tuple[str, str], MetaEntry] = LRU(CacheSizes.split(settings.memory_cache).meta, meta_size)
        self._flights: Flights[tuple[str, str], MetaEntry] = Flights()

    def memory_hit(self, req: ModRequest) -> MetaAnswer | None:
        """A fresh answer held in memory (the fast path), or None."""
        cached = self.cache.get(_meta_key(req))
        if cached is None:
            return None
        age = self.clock() - cached.fetched_at
        if not 0 <= age < self.settings.meta_ttl:
            return None
        return MetaAnswer(cached.body, "hit", age, cached.source)

    async def meta(self, req: ModRequest, local_only: bool = False) -> MetaAnswer:
        """`@v/list`, `@latest` or a version query (`.info` of a branch, tag or commit):
        fresh for meta_ttl, then stale-while-revalidate, then refreshed. When every
        upstream fails: the cached answer (stale), a peer's, or (list/latest) one built
        from the versions the store holds."""
        now = self.clock()
        cached = await self._cached_meta(req)
        s = self.settings
        if local_only or s.offline:
            if cached is None:
                held = await self._from_held(req) if s.offline else None
                if held is not None:
                    return held
                raise NotFound(f"{req.key} is not cached on this node" + (" (offline)" if s.offline else ""))
            age = max(0.0, now - cached.fetched_at)
            if age < s.meta_ttl:
                return MetaAnswer(cached.body, "hit", age, cached.source)
            return MetaAnswer(cached.body, "stale", age, cached.source, "offline" if s.offline else "peer")
        if cached is not None:
            age = max(0.0, now - cached.fetched_at)
            if age < s.meta_ttl:
                return MetaAnswer(cached.body, "hit", age, cached.source)
            if age < s.meta_ttl + s.meta_stale_window:
                self._meta_refresh(req)  # stale-while-revalidate
                return MetaAnswer(cached.body, "stale", age, cached.source, "revalidating")
        self.negative.check(req.key)
        try:
            fresh = await asyncio.shield(self._meta_refresh(req))
        except ModmeshError as e:
            not_found = isinstance(e, NotFound)
            # A list never vanishes: an upstream that now says "no such module" (or fails)
            # does not take away versions clients have built with. A query may be gone.
            if cached is not None and not (not_found and req.kind == "query"):
                log.warning("serving stale %s: %s", req.key, e)
                return MetaAnswer(cached.body, "stale", now - cached.fetched_at, cached.source, "upstream-failed")
            answer = None if not_found else await self._meta_from_peers(req)
            if answer is None:
                answer = await self._from_held(req)
            if answer is not None:
                return answer
            if isinstance(e, NotFound):
                self.negative.remember(req.key, e)
            raise
        return MetaAnswer(fresh.body, "miss" if cached is None else "revalidated", 0.0, fresh.source)

    async def admit(self, req: ModRequest, origin: str, body: bytes, fetched_at: float) -> tuple[MetaEntry, bool]:
        """Take an `@v/list` / `@latest` answer from an import, vetted like an upstream's
        (IntegrityError), keeping its original fetch time. The newer answer wins: returns
        (entry kept, True) if this one was stored, (current entry, False) if not."""
        body = verify.normalize_list(req, body) if req.kind == "list" else verify.check_latest(req, body)
        fetched_at = min(fetched_at, self.clock())  # a clock ahead must not make it fresh forever
        current = await self.index.get_meta(req.module, req.kind)
        if current is not None and current.fetched_at >= fetched_at:
            return current, False
        if req.kind == "list" and current is not None:
            body = verify.merge_lists(body, current.body)
        m = MetaEntry(req.module, req.kind, body, origin, fetched_at)
        await self.index.put_meta(m)
        self.cache.put(_meta_key(req), m)
        self.negative.forget(req.key)
        return m, True

    async def _cached_meta(self, req: ModRequest) -> MetaEntry | None:
        key = _meta_key(req)
        cached = self.cache.get(key)
        if cached is None:
            if req.kind == "query":
                cached = await self.index.get_query(req.module, req.version)
            else:
                cached = await self.index.get_meta(req.module, req.kind)
            if cached is not None:
                self.cache.put(key, cached)
        return cached

    async def _from_held(self, req: ModRequest) -> MetaAnswer | None:
        """A list, or `@latest`, built from the versions the store holds files of; served
        as stale and never cached as an upstream's answer."""
        if req.kind not in ("list", "latest"):
            return None
        held = await self.index.held_versions(req.module)
        if not held:
            return None
        age = self.settings.meta_ttl
        if req.kind == "list":
            tagged = [v for v, _ in held if not pseudo.is_pseudo_version(v)]
            body = verify.merge_lists("".join(v + "\n" for v in tagged).encode())
            return MetaAnswer(body, "stale", age, "store", "upstream-failed")
        infos = {v: sha for v, sha in held if sha is not None}
        latest = verify.latest_of(list(infos))
        if latest is None:
            return None
        served = await self.files.lookup(ModRequest(req.module, latest, "info"))
        if served is None:
            return None
        info = served.body
        if info is None:
            assert served.path is not None
            info = await asyncio.to_thread(served.path.read_bytes)
        return MetaAnswer(info, "stale", age, "store", "upstream-failed")

    async def _meta_from_peers(self, req: ModRequest) -> MetaAnswer | None:
        """Every upstream failed and nothing is cached: a peer's copy (vetted like an
        upstream's) lets @latest resolve offline. Kept as already expired."""
        if self.hooks.peers is None:
            return None
        for cand in self.hooks.peers.peers_for(req):
            peer = cand.upstream
            try:
                body = await peer.fetch(req.upstream_path, functools.partial(self._vet_meta, req, peer), small=True)
            except ModmeshError as e:
                self.hooks.peers.report(peer, req, e)
                continue
            m = MetaEntry(req.module, _meta_kind(req), body, peer.name, self.clock() - self.settings.meta_ttl)
            await self._save_meta(req, m)
            return MetaAnswer(body, "stale", self.settings.meta_ttl, peer.name, "from-peer")
        return None

    async def _vet_meta(self, req: ModRequest, up: Source, resp: aiohttp.ClientResponse) -> bytes:
        body = await door.read_bounded(resp, verify.MAX_LIST, req)
        self.metrics.upstream_bytes.labels(up.name).inc(len(body))
        if req.kind == "list":
            return verify.normalize_list(req, body)
        verify.resolved_version(req, body)
        return body

    def _meta_refresh(self, req: ModRequest) -> asyncio.Task[MetaEntry]:
        """The one fetch of `req`'s answer, shared: await it shielded (a caller that goes
        away cancels it for no one else); a refresh nobody waits for runs on alone."""
        task, new = self._flights.task(_meta_key(req), functools.partial(self._fetch_meta, req))
        if not new:
            self.metrics.coalesced.labels(req.kind).inc()
        return task

    async def _fetch_meta(self, req: ModRequest) -> MetaEntry:
        body, up = await self.chain_for(req.module).fetch(
            req.upstream_path, functools.partial(self._vet_meta, req), small=True
        )
        if req.kind == "list":
            body = await self._merged_list(req, body)
        m = MetaEntry(req.module, _meta_kind(req), body, up.name, self.clock())
        await self._save_meta(req, m)
        self.negative.forget(req.key)
        if req.kind == "query":
            await self._keep_resolved_info(req, body, up.name)
        return m

    async def _merged_list(self, req: ModRequest, fresh: bytes) -> bytes:
        """An upstream's list plus every version seen before: in the last list, or held."""
        previous = await self._cached_meta(req)
        held = [v for v, _ in await self.index.held_versions(req.module) if not pseudo.is_pseudo_version(v)]
        return verify.merge_lists(fresh, previous.body if previous else b"", "".join(v + "\n" for v in held).encode())

    async def _keep_resolved_info(self, req: ModRequest, body: bytes, origin: str) -> None:
        """A query's answer is the `.info` of the version it resolved to: keep it if the
        store has none yet (a later `.info` request is then a hit)."""
        info = ModRequest(req.module, verify.resolved_version(req, body), "info")
        try:
            if await self.files.lookup(info) is None:
                await self.files.admit(info, origin, _once(body))
        except ModmeshError as e:
            log.info("not keeping %s from the answer to %s: %s", info.key, req.key, e)

    async def _save_meta(self, req: ModRequest, m: MetaEntry) -> None:
        """Keep a list/latest/query answer; if the index cannot grow (a full disk), the
        answer is still served, from memory."""
        self.cache.put(_meta_key(req), m)
        try:
            if req.kind == "query":
                await self.index.put_query(m)
            else:
                await self.index.put_meta(m)
        except Exception as e:
            cause = storage_error_cause(e)
            if cause is None:
                raise
            if self.store.status.refusal is None:
                log.warning("index cannot store %s (%s): serving it from memory", req.key, cause)
            self.store.status.refused(cause, req.key, self.clock())

    async def aclose(self) -> None:
        await self._flights.aclose()


def _meta_key(req: ModRequest) -> tuple[str, str]:
    return (req.module, "query " + req.version) if req.kind == "query" else (req.module, req.kind)


def _meta_kind(req: ModRequest) -> str:
    """The `kind` of a MetaEntry: list or latest, or for a query, the query itself."""
    return req.version if req.kind == "query" else req.kind


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
