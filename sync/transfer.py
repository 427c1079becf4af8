"""Getting bytes from peers: the node's PeerSource, and resumable background pulls.

Client misses (`MeshPeers`): the node's proxy asks `peers_for(req)` and fetches
from each candidate through an ordinary `Upstream` (signed, with the hop header
so the peer answers from its cache only, and timeouts equal to the mesh's time
budget), verifying exactly as for an upstream; `report` hears how it went. A
peer that sent bad bytes is quarantined; one that lacks the file loses it from
the catalog; one that failed is suspect. No peer is asked for a private module
(sync/privacy.py): the question alone would name it.

Pre-sync (`Puller`): a whole file into a temp file under the store's tmp dir, with
HTTP Range resumption from the same or another peer advertising the same sha256,
a shared bandwidth cap, then `ModuleProxy.admit` (zip rules, h1, checksum
database, atomic commit). Nothing is visible before admit commits; the temp file
is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

from node.cache.protocol import ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.upstream import Upstream
from node.errors import IntegrityError, ModmeshError, NotFound
from node.golang import modzip
from node.hooks import PeerCandidate

from .catalog import Catalog, Holding, slots_of
from .membership import ALIVE, Member, Membership
from .metrics import MeshMetrics

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
LABEL = "peer:"
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def peer_id(up: Upstream) -> str:
    return (up.label or "").removeprefix(LABEL)


class MeshPeers:
    """node.hooks.PeerSource over the member table and the catalog."""

    def __init__(
        self,
        membership: Membership,
        catalog: Catalog,
        upstream_for: Callable[[Member], Upstream],
        metrics: MeshMetrics,
        quarantine: Callable[[str, str], None],
        max_candidates: int = 2,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        private: Callable[[str], bool] = lambda module: False,
    ) -> None:
        self.membership = membership
        self.private = private
        self.catalog = catalog
        self.upstream_for = upstream_for
        self.metrics = metrics
        self.quarantine = quarantine
        self.max_candidates = max_candidates
        self.clock = clock
        self.rng = rng or random.Random()

    def peers_for(self, req: ModRequest) -> list[PeerCandidate]:
        if self.private(req.module):
            return []
        now = self.clock()
        if req.versioned:
            found = []
            for h in self.catalog.holdings(req.key):
                for slot in slots_of(h.holders):
                    m = self.membership.by_slot(slot)
                    if m is not None and m.usable(now):
                        found.append((m.state != ALIVE, self.rng.random(), m, h))
            found.sort(key=lambda t: t[:2])
            return [PeerCandidate(self.upstream_for(m), h.sha256, h.h1) for _, _, m, h in found[: self.max_candidates]]
        # list / @latest: members that hold some version of the module first.
        mask = self.catalog.module_holders(req.module)
        ranked = sorted(
            self.membership.usable(now),
            key=lambda m: (not (mask >> m.slot) & 1, m.state != ALIVE, self.rng.random()),
        )
        return [PeerCandidate(self.upstream_for(m)) for m in ranked[: self.max_candidates + 1]]

    def report(self, peer: Upstream, req: ModRequest, error: Exception | None) -> None:
        node_id = peer_id(peer)
        m = self.membership.get(node_id)
        if error is None:
            self.metrics.peer_fetches.labels(node_id, "miss", "ok").inc()
            if m is not None:
                m.failures = 0
        elif isinstance(error, IntegrityError):
            self.metrics.peer_fetches.labels(node_id, "miss", "rejected").inc()
            self.quarantine(node_id, f"{req.key}: {error}")
        elif isinstance(error, NotFound):
            self.metrics.peer_fetches.labels(node_id, "miss", "not_found").inc()
            if m is not None and req.versioned:
                self.catalog.discard(m.slot, req.key)
        else:
            self.metrics.peer_fetches.labels(node_id, "miss", "error").inc()
            self.membership.failed(node_id, self.clock())


class RateLimiter:
    """Bytes per second across every pre-sync transfer (virtual scheduling: each
    taker pays its debt by sleeping, so the sum stays near `rate`). 0: unlimited."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(rate, CHUNK)
        self.clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def debt(self, n: int) -> float:
        """Take `n` bytes; seconds the caller must wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate) - n
        self._at = now
        return max(0.0, -self._tokens / self.rate)

    async def take(self, n: int) -> None:
        wait = self.debt(n)
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class Source:
    node_id: str
    url: str


class _NotHere(Exception):
    pass


class _Lied(Exception):
    pass


class Puller:
    """Pull one versioned file from peers into the store, resuming where it broke."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        headers: Callable[[str, str], Mapping[str, str]],
        tmp_dir: Path,
        proxy: ModuleProxy,
        timeout: float,
        limiter: RateLimiter,
        metrics: MeshMetrics,
        quarantine: Callable[[str, str], None],
        missing: Callable[[str, str], None],
        failed: Callable[[str], None],
    ) -> None:
        self.session = session
        self.headers = headers  # (url path, node id) -> signed headers with the hop header
        self.tmp_dir = tmp_dir
        self.proxy = proxy
        self.timeout = timeout
        self.limiter = limiter
        self.metrics = metrics
        self.quarantine = quarantine
        self.missing = missing
        self.failed = failed

    async def pull(self, req: ModRequest, want: Holding, sources: list[Source]) -> bool:
        """True once the file is verified and committed (or was already there)."""
        if not sources or not 0 < want.size <= modzip.MAX_ZIP_FILE:
            return False  # nothing to ask, or an advertised size no sound file has
        tmp = self.tmp_dir / f"mesh-{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        state = _Progress(fd, hashlib.sha256())
        tries = list(sources)
        try:
            attempts = 0
            while state.offset < want.size and tries and attempts < 2 * len(sources) + 1:
                src = tries[attempts % len(tries)]
                attempts += 1
                try:
                    await self._segment(src, req, want, state)
                except _NotHere:
                    self.missing(src.node_id, req.key)
                    tries.remove(src)
                except _Lied as e:
                    self.metrics.peer_fetches.labels(src.node_id, "presync", "rejected").inc()
                    self.quarantine(src.node_id, f"{req.key}: {e}")
                    tries.remove(src)
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    self.metrics.peer_fetches.labels(src.node_id, "presync", "error").inc()
                    log.info(
                        "pre-sync of %s from %s broke at %d/%d bytes: %s",
                        req.key,
                        src.node_id,
                        state.offset,
                        want.size,
                        type(e).__name__,
                    )
                    self.failed(src.node_id)
            if state.offset != want.size:
                return False
            if state.hash.hexdigest() != want.sha256:
                for node_id in state.contributors:
                    self.quarantine(node_id, f"{req.key}: bytes differ from the advertised sha256")
                return False
            origin = LABEL + state.contributors[-1]
            try:
                await self.proxy.admit(req, origin, _read_file(fd, want.size), want.size)
            except IntegrityError as e:
                for node_id in state.contributors:
                    self.metrics.peer_fetches.labels(node_id, "presync", "rejected").inc()
                    self.quarantine(node_id, f"{req.key}: {e}")
                return False
            except ModmeshError as e:  # not the peer's fault: the database is away, the disk full
                log.info("pre-sync of %s not admitted: %s", req.key, e)
                return False
            for node_id in state.contributors:
                self.metrics.peer_fetches.labels(node_id, "presync", "ok").inc()
            return True
        finally:
            os.close(fd)
            tmp.unlink(missing_ok=True)

    async def _segment(self, src: Source, req: ModRequest, want: Holding, st: _Progress) -> None:
        path = "/" + req.upstream_path
        url = src.url + path
        headers = dict(self.headers(URL(url).raw_path, src.node_id))
        resuming = st.offset > 0
        if resuming:
            headers["Range"] = f"bytes={st.offset}-"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        async with self.session.get(URL(url, encoded=True), headers=headers, timeout=timeout) as resp:
            if resp.status == 404:
                raise _NotHere()
            if resp.status == 206 and resuming:
                m = _RANGE.match(resp.headers.get("Content-Range", ""))
                if m is None or int(m[1]) != st.offset:
                    raise aiohttp.ClientPayloadError(f"unusable Content-Range from {src.node_id}")
                self.metrics.resumed.inc()
                log.info("resuming %s from %s at byte %d", req.key, src.node_id, st.offset)
            elif resp.status == 200:
                st.restart()  # the peer ignored our Range (small blobs come from memory)
            else:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            if src.node_id not in st.contributors:
                st.contributors.append(src.node_id)
            async for chunk in resp.content.iter_chunked(CHUNK):
                if st.offset + len(chunk) > want.size:
                    raise _Lied(f"sent more than the advertised {want.size} bytes")
                await self.limiter.take(len(chunk))
                st.write(chunk)


@dataclass
class _Progress:
    fd: int
    hash: hashlib._Hash
    offset: int = 0
    contributors: list[str] = field(default_factory=list)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(self.fd, view, self.offset)
            self.offset += n
            view = view[n:]
        self.hash.update(chunk)

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        self.offset = 0
        self.hash = hashlib.sha256()
        self.contributors = []


async def _read_file(fd: int, size: int) -> AsyncIterator[bytes]:
    """The finished temp file for admit(), read in a thread (it may be large)."""
    offset = 0
    while offset < size:
        chunk = await asyncio.to_thread(os.pread, fd, CHUNK, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk
