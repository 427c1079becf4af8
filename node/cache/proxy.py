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
meta:      list/latest with a TTL, stale-while-revalidate, and serve-stale when
           every upstream fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from node.cache import verify
from node.cache.index import Entry, Index, MetaEntry
from node.cache.inflight import CHUNK, Download, Transfer
from node.cache.protocol import ModRequest
from node.cache.spool import MemoryBudget, Spool, storage_error_cause
from node.cache.store import BlobStore
from node.cache.upstream import Source, Upstream, UpstreamChain
from node.errors import IntegrityError, ModmeshError, NotFound, StorageFull, UpstreamError
from node.golang import dirhash, modzip, pseudo
from node.golang.patterns import match_prefix_patterns
from node.golang.zipstream import ZipStreamHasher
from node.hooks import Hooks
from node.metrics import Metrics

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

#: Small blobs kept in memory so hot .info/.mod hits skip the file system.
SMALL_BLOB = 64 * 1024


class LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used key."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxlen:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)


class BlobVerifier(Protocol):
    """Checks a verified-sound blob against an outside authority (the checksum database)."""

    def start_lookup(self, module: str, version: str) -> None: ...

    async def verify(self, module: str, version: str, kind: str, h1: str, require: bool = False) -> bool:
        """True if confirmed (or not checked), False if the authority could not say;
        IntegrityError if it disagrees (or could not say, with `require`)."""


@dataclass(frozen=True)
class ProxySettings:
    meta_ttl: float = 300.0
    #: After the TTL, serve the cached list/latest while refreshing in the
    #: background for this long; after that, refresh before answering.
    meta_stale_window: float = 300.0
    negative_ttl: float = 60.0
    #: Zips up to this size are verified whole before the first byte goes out;
    #: larger ones stream to waiting clients while they download.
    stream_threshold: int = 4 << 20
    #: Serve only what is cached; list/latest of any age.
    offline: bool = False
    #: Bytes of files the store cannot take (disk full) held in memory at once to
    #: pass them through to clients uncached.
    passthrough_memory: int = 512 << 20


@dataclass(frozen=True, slots=True)
class Served:
    """A versioned file ready to send: from memory (`body`) or from `path`."""

    entry: Entry
    path: Path | None  # None when `body` holds the bytes
    body: bytes | None
    cache: str  # "hit" or "miss"


@dataclass(frozen=True, slots=True)
class MetaAnswer:
    body: bytes
    cache: str  # hit, miss, revalidated, stale
    age: float
    source: str
    stale_reason: str | None = None


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
        self._entries: LRU[str, Entry] = LRU(100_000)
        self._small: LRU[str, bytes] = LRU(4096)
        self._meta: LRU[tuple[str, str], MetaEntry] = LRU(20_000)
        self._negative: LRU[str, tuple[float, NotFound]] = LRU(50_000)
        self._flights: dict[str, Download] = {}
        self._meta_flights: dict[tuple[str, str], asyncio.Task[MetaEntry]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.passthrough_budget = MemoryBudget(settings.passthrough_memory)
        #: (module, size) -> why the store must not keep such a file, or None (storage limits).
        self.refuse_store: Callable[[str, int], str | None] = lambda module, size: None

    def chain_for(self, module: str) -> UpstreamChain:
        for pattern, chain in self.routes:
            if match_prefix_patterns(pattern, module):
                return chain
        return self.chain

    # ---- versioned files -------------------------------------------------

    async def versioned(self, req: ModRequest, local_only: bool = False) -> Served | Transfer:
        """A hit, a completed miss, or a Transfer the caller streams and then closes:
        a large zip still downloading, or a file the store could not take.

        `local_only` (a request from a peer node) never fetches: no forwarding loops.
        """
        served = await self.lookup(req)
        if served is not None:
            if not local_only:
                self.hooks.accessed(req, "hit")
                return served
            if not served.entry.unverified:
                return served
        if local_only:  # a peer gets only what the checksum database confirmed
            raise NotFound(f"{req.key} is not cached on this node")
        self._check_negative(req)
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
                    return Served(entry, self.store.path_for(entry.sha256), self._small.get(entry.sha256), "miss")
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

    async def lookup(self, req: ModRequest) -> Served | None:
        entry = self._entries.get(req.key)
        if entry is None:
            entry = await self.index.get(req.module, req.version, req.kind)
            if entry is None:
                return None
            self._entries.put(req.key, entry)
        body = self._small.get(entry.sha256)
        path = None
        if body is None:
            path = self.store.path_for(entry.sha256)
            try:
                if entry.size <= SMALL_BLOB:
                    body = path.read_bytes()
                    self._small.put(entry.sha256, body)
                elif not path.is_file():
                    raise FileNotFoundError(path)
            except FileNotFoundError:
                log.warning("blob for %s missing from the store; refetching", req.key)
                self._entries.pop(req.key)
                await self.index.delete(req.module, req.version, req.kind)
                return None
        self.index.touch(req.module, req.version, req.kind, self.clock())
        return Served(entry, path, body, "hit")

    def memory_hit(self, req: ModRequest) -> Served | MetaAnswer | None:
        """A hit answerable from memory without waiting on anything (the fast path):
        a versioned file whose bytes are in memory, or a fresh list/latest. None otherwise."""
        if req.versioned:
            entry = self._entries.get(req.key)
            if entry is None:
                return None
            body = self._small.get(entry.sha256)
            if body is None:
                return None
            self.index.touch(req.module, req.version, req.kind, self.clock())
            self.hooks.accessed(req, "hit")
            return Served(entry, None, body, "hit")
        cached = self._meta.get(_meta_key(req))
        if cached is None:
            return None
        age = self.clock() - cached.fetched_at
        if not 0 <= age < self.settings.meta_ttl:
            return None
        return MetaAnswer(cached.body, "hit", age, cached.source)

    def forget(self, req_key: str, sha256: str | None = None) -> None:
        """Drop in-memory copies of a row (and of its blob's bytes) that storage.py
        evicted or found corrupt, so the next request reads the index and disk again."""
        self._entries.pop(req_key)
        if sha256 is not None:
            self._small.pop(sha256)

    def _check_negative(self, req: ModRequest) -> None:
        neg = self._negative.get(req.key)
        if neg is not None:
            expires, err = neg
            if self.clock() < expires:
                raise err
            self._negative.pop(req.key)

    def _remember_missing(self, req: ModRequest, err: NotFound) -> None:
        if self.settings.negative_ttl > 0:
            self._negative.put(req.key, (self.clock() + self.settings.negative_ttl, err))

    def _spool(self, req: ModRequest, passing: bool = True) -> Spool:
        return Spool(self.store, self.passthrough_budget, functools.partial(self._store_refused, req, passing))

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
                self.hooks.stored(entry)
            else:
                self.metrics.passthrough_files.labels(dl.spool.passthrough or "unknown").inc()
                self.metrics.passthrough_bytes.inc(entry.size)
        except NotFound as e:
            self._remember_missing(req, e)
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
                    self.store.remove(blob.sha256)
            return entry
        if self.store.status.stored():
            log.info("the store takes files again (%s %s .%s stored)", req.module, req.version, req.kind)
        self._entries.put(req.key, entry)
        if entry.size <= SMALL_BLOB and self._small.get(entry.sha256) is None:
            self._small.put(entry.sha256, spool.read(0, entry.size))
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
        body = await _read_bounded(resp, limit, dl.req)
        self.metrics.upstream_bytes.labels(up.name).inc(len(body))
        return self._take_small(dl, body)

    def _take_small(self, dl: Download, body: bytes) -> str | None:
        """Vet a whole .info or .mod body and write it; returns the .mod's h1."""
        req = dl.req
        if req.kind == "info":
            verify.check_info(req, body)
            h1 = None
        else:
            verify.check_mod(req, body)
            h1 = dirhash.h1_gomod(body)
        dl.begin(len(body))
        dl.write(body)
        return h1

    async def _consume_zip(self, dl: Download, up: Source, resp: aiohttp.ClientResponse) -> str:
        encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
        received = self.metrics.upstream_bytes.labels(up.name)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in resp.content.iter_chunked(CHUNK):
                received.inc(len(chunk))
                yield chunk

        origin = "the upstream" if isinstance(up, Upstream) and not up.label else up.name
        return await self._take_zip(dl, origin, chunks(), None if encoded else resp.content_length)

    async def _take_zip(self, dl: Download, origin: str, chunks: AsyncIterable[bytes], length: int | None) -> str:
        """Write a zip as it arrives, hashing every entry on the way; verify; return h1."""
        req = dl.req
        what = f"{req.module}@{req.version}"
        if length is not None and length > modzip.MAX_ZIP_FILE:
            raise IntegrityError(f"zip for {what} from {origin} is larger than 500 MiB")
        dl.begin(length)
        hasher = ZipStreamHasher()
        async for chunk in chunks:
            dl.write(chunk)
            hasher.feed(chunk)
            if dl.written > modzip.MAX_ZIP_FILE:
                raise IntegrityError(f"zip for {what} from {origin} is larger than 500 MiB")
        if dl.written == 0:
            raise IntegrityError(f"{origin} sent an empty zip for {what}")
        if length is not None and dl.written != length:
            raise UpstreamError(f"{origin} sent {dl.written} of {length} bytes of {what}.zip")
        try:
            checked = await asyncio.to_thread(_check_zip, dl.spool, req.module, req.version, hasher.digests())
        except ValueError as e:
            # Worded as the go command words it when it unzips such a file itself.
            raise IntegrityError(
                f"unzip {req.upstream_path}: {e} (the zip {origin} sent breaks the module zip rules; not cached)"
            ) from None
        return checked.h1

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
                h1: str | None = await self._take_zip(dl, origin, chunks, length)
            else:
                body = b"".join([c async for c in chunks])
                h1 = self._take_small(dl, body)
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
        self._negative.pop(req.key)
        self.hooks.stored(entry)
        return entry, True

    # ---- list, latest and version queries ----------------------------------

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
        self._check_negative(req)
        try:
            fresh = await self._meta_refresh(req)
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
                self._remember_missing(req, e)
            raise
        return MetaAnswer(fresh.body, "miss" if cached is None else "revalidated", 0.0, fresh.source)

    async def admit_meta(self, req: ModRequest, origin: str, body: bytes, fetched_at: float) -> tuple[MetaEntry, bool]:
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
        self._meta.put(_meta_key(req), m)
        self._negative.pop(req.key)
        return m, True

    async def _cached_meta(self, req: ModRequest) -> MetaEntry | None:
        key = _meta_key(req)
        cached = self._meta.get(key)
        if cached is None:
            if req.kind == "query":
                cached = await self.index.get_query(req.module, req.version)
            else:
                cached = await self.index.get_meta(req.module, req.kind)
            if cached is not None:
                self._meta.put(key, cached)
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
        served = await self.lookup(ModRequest(req.module, latest, "info"))
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
        body = await _read_bounded(resp, verify.MAX_LIST, req)
        self.metrics.upstream_bytes.labels(up.name).inc(len(body))
        if req.kind == "list":
            return verify.normalize_list(req, body)
        verify.resolved_version(req, body)
        return body

    def _meta_refresh(self, req: ModRequest) -> asyncio.Task[MetaEntry]:
        key = _meta_key(req)
        task = self._meta_flights.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch_meta(req))
            self._meta_flights[key] = task
            task.add_done_callback(lambda t: self._meta_flights.pop(key, None))
            task.add_done_callback(_quiet)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
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
        self._negative.pop(req.key)
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
            if await self.lookup(info) is None:
                await self.admit(info, origin, _once(body))
        except ModmeshError as e:
            log.info("not keeping %s from the answer to %s: %s", info.key, req.key, e)

    async def _save_meta(self, req: ModRequest, m: MetaEntry) -> None:
        """Keep a list/latest/query answer; if the index cannot grow (a full disk), the
        answer is still served, from memory."""
        self._meta.put(_meta_key(req), m)
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


def _meta_key(req: ModRequest) -> tuple[str, str]:
    return (req.module, "query " + req.version) if req.kind == "query" else (req.module, req.kind)


def _meta_kind(req: ModRequest) -> str:
    """The `kind` of a MetaEntry: list or latest, or for a query, the query itself."""
    return req.version if req.kind == "query" else req.kind


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _check_zip(
    spool: Spool, module: str, version: str, digests: Mapping[str, tuple[str, int]] | None
) -> modzip.CheckedZip:
    with spool.open_for_check() as f:
        return modzip.check_zip_file(f, module, version, digests)


def _quiet(task: asyncio.Task[MetaEntry]) -> None:
    if not task.cancelled():
        task.exception()  # background refresh failures are logged where they happen


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, req: ModRequest) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise IntegrityError(f"upstream {req.kind} answer for {req.key} is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise IntegrityError(f"upstream {req.kind} answer for {req.key} is too large")
        chunks.append(chunk)
    return b"".join(chunks)
