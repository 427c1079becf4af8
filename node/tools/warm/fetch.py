"""The two ways `modmesh warm` reaches a node, behind one `Fetcher` protocol.

* `HttpFetcher` (`--node URL`): plain GOPROXY GETs, as any client would send
  them; the node's `X-Modmesh-Cache` header tells a fetch ("miss") from a file
  already cached ("hit"), and 429s (its per-client rate limit) are waited out.
* `LocalFetcher` (`--data DIR`): a Node built in this process on the data
  directory, no listener, safe beside a node running on the same directory.

Either answers a file with its size and h1, and a checksum-database record with
where it came from; a failure is a `FetchError` whose message is shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp

from node.cache.protocol import Kind, ModRequest
from node.cache.upstream import redact
from node.errors import ModmeshError, NotFound
from node.golang import modpath
from node.tools._http import bearer, describe, first_line
from node.tools.target import UsageError

if TYPE_CHECKING:
    from node.service import Node

CACHE_HEADER = "X-Modmesh-Cache"
H1_HEADER = "X-Modmesh-H1"
CHUNK = 256 * 1024
RETRIES_429 = 6  # tries per request while the node answers 429 (its per-client rate limit)


class FetchError(Exception):
    """One file or record could not be warmed; the message is the reason shown."""


@dataclass(frozen=True)
class FileAnswer:
    cache: str  # "hit" or "miss"
    size: int
    h1: str | None


class Fetcher(Protocol):
    """A node to warm: over HTTP, or in this process."""

    databases: list[str]

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer: ...

    async def record(self, db: str, module: str, version: str) -> str: ...  # hit, miss, private


class HttpFetcher:
    """A running node, spoken to like any GOPROXY client would (credentials from a
    client token, or user:password in the URL; 429s are waited out)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, databases: list[str], token: str | None = None
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.databases = databases
        self.headers = bearer(token)

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, base: str, token: str | None = None) -> HttpFetcher:
        """Check the node answers and learn which checksum databases it proxies."""
        base = base.rstrip("/")
        try:
            async with session.get(f"{base}/healthz") as resp:
                if resp.status != 200:
                    raise UsageError(f"{redact(base)} is not a modmesh node (/healthz answered {resp.status})")
                health = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise UsageError(f"cannot reach node {redact(base)}: {_describe(e)}") from None
        dbs = [str(d["name"]) for d in health.get("sumdb", []) if isinstance(d, dict) and "name" in d]
        return cls(session, base, dbs, token)

    @asynccontextmanager
    async def _get(self, url: str, method: str = "GET") -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; a 429 (the node's per-client rate limit) is retried after Retry-After."""
        for attempt in range(RETRIES_429):
            resp = await self.session.request(method, url, headers=self.headers)
            if resp.status == 429 and attempt < RETRIES_429 - 1:
                wait = _retry_after(resp.headers.get("Retry-After"), attempt)
                resp.release()
                await asyncio.sleep(wait)
                continue
            try:
                yield resp
            finally:
                resp.release()
            return

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer:
        url = f"{self.base}/{ModRequest(module, version, kind).upstream_path}"
        size = 0
        try:
            async with self._get(url) as resp:
                if resp.status != 200:
                    raise FetchError(f".{kind}: {resp.status} {await first_line(resp, 512, 200)}".rstrip())
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                cache, h1 = resp.headers.get(CACHE_HEADER, "miss"), resp.headers.get(H1_HEADER)
            if h1 is None and kind != "info":
                # A zip streamed while downloading carries no h1 header; it is cached now.
                async with self._get(url, "HEAD") as resp:
                    h1 = resp.headers.get(H1_HEADER)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise FetchError(f".{kind}: {_describe(e)}") from None
        return FileAnswer("hit" if cache == "hit" else "miss", size, h1)

    async def record(self, db: str, module: str, version: str) -> str:
        url = f"{self.base}/sumdb/{db}/lookup/{modpath.escape_path(module)}@{modpath.escape_version(version)}"
        try:
            async with self._get(url) as resp:
                if resp.status == 404:
                    text = await first_line(resp, 512, 200)
                    if "private patterns" in text:  # app.sumdb_response refuses private modules
                        return "private"
                    raise FetchError(f"checksum database {db}: {text or 'no record'}")
                if resp.status != 200:
                    raise FetchError(
                        f"checksum database {db}: {resp.status} {await first_line(resp, 512, 200)}".rstrip()
                    )
                await resp.read()
                return "hit" if resp.headers.get(CACHE_HEADER) == "hit" else "miss"
        except (TimeoutError, aiohttp.ClientError) as e:
            raise FetchError(f"checksum database {db}: {_describe(e)}") from None


class LocalFetcher:
    """A Node in this process, on a data directory (no listener)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.databases = [db.name for db in node.sumdbs.dbs]

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer:
        proxy = self.node.proxy
        req = ModRequest(module, version, kind)
        try:
            hit = await proxy.lookup(req)
            if hit is not None:
                return FileAnswer("hit", hit.entry.size, hit.entry.h1)
            entry, stored = await proxy.fetch(req)
        except ModmeshError as e:
            raise FetchError(f".{kind}: {e}") from None
        if not stored:
            refusal = self.node.store.status.refusal
            raise FetchError(f".{kind}: fetched but not cached: {refusal.cause if refusal else 'the store refused it'}")
        return FileAnswer("miss", entry.size, entry.h1)

    async def record(self, db: str, module: str, version: str) -> str:
        if self.node.sumdbs.is_private(module):
            return "private"
        sumdb = next(d for d in self.node.sumdbs.dbs if d.name == db)
        try:
            _, cache = await sumdb.lookup(module, version)
        except NotFound as e:
            raise FetchError(f"checksum database {db}: no record: {e}") from None
        except ModmeshError as e:
            raise FetchError(f"checksum database {db}: {e}") from None
        return cache


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(30.0, max(0.1, float(value or "")))
    except ValueError:
        return min(30.0, 0.5 * 2.0**attempt)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return describe(e)


def http_session(read_timeout: float = 300.0) -> aiohttp.ClientSession:
    """A client for a node: its answers can take as long as its upstreams do."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
    return aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "modmesh-warm"})
