"""What the node answers to a GOPROXY request: the headers of a versioned file or a
list/latest answer, for aiohttp's responses and the fast path's raw ones alike."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from types import MappingProxyType

from aiohttp import web
from aiohttp.web_response import StreamResponse

from node.cache import hot
from node.cache.inflight import CHUNK
from node.cache.model import MetaAnswer, Served
from node.cache.protocol import ModRequest, canonical_request, parse_request
from node.cache.proxy import ModuleProxy
from node.errors import ModmeshError
from node.server.accesslog import CACHE, UPSTREAM, RequestRecorder

CONTENT_TYPES = {
    "info": "application/json",
    "latest": "application/json",
    "mod": "text/plain; charset=utf-8",
    "list": "text/plain; charset=utf-8",
    "zip": "application/zip",
    "query": "application/json",
}
IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_HEADER = "X-Modmesh-Cache"
STALE_HEADER = "X-Modmesh-Stale"


def blob_headers(sha256: str, h1: str | None, kind: str, cache: str, in_memory: bool) -> Mapping[str, str]:
    """Response headers of a versioned file (`hit_head` writes the same for the fast path)."""
    headers = {
        "Cache-Control": IMMUTABLE,
        CACHE_HEADER: cache,
        "Repr-Digest": "sha-256=:" + base64.b64encode(bytes.fromhex(sha256)).decode() + ":",
        "Content-Type": CONTENT_TYPES[kind],
    }
    if h1:
        headers["X-Modmesh-H1"] = h1
    if in_memory:
        headers["ETag"] = f'"{sha256}"'
    return MappingProxyType(headers)


def served_response(req: ModRequest, s: Served, request: web.Request) -> StreamResponse:
    request[CACHE] = s.cache
    request[UPSTREAM] = s.entry.source if s.cache == "miss" else ""
    headers = blob_headers(s.entry.sha256, s.entry.h1, req.kind, s.cache, s.body is not None)
    if s.body is not None:
        return web.Response(body=s.body, headers=headers)
    # sendfile; aiohttp derives ETag from the file and handles Range/HEAD.
    assert s.path is not None
    return web.FileResponse(s.path, chunk_size=CHUNK, headers=headers)


def meta_response(req: ModRequest, a: MetaAnswer, ttl: float, request: web.Request) -> web.Response:
    request[CACHE] = a.cache
    request[UPSTREAM] = a.source if a.cache in ("miss", "revalidated") else ""
    fresh_for = 0 if a.cache == "stale" else max(0, int(ttl - a.age))
    headers = {
        "Cache-Control": f"public, max-age={fresh_for}",
        "Age": str(int(a.age)),
        CACHE_HEADER: a.cache,
    }
    if a.stale_reason:
        headers[STALE_HEADER] = a.stale_reason
    resp = web.Response(body=a.body, headers=headers)
    resp.content_type = CONTENT_TYPES[req.kind].split(";")[0]
    if req.kind == "list":
        resp.charset = "utf-8"
    return resp


_HIT_LINES = (
    f"\r\nCache-Control: {IMMUTABLE}\r\n{CACHE_HEADER}: hit\r\nRepr-Digest: sha-256=:".encode(),
    {kind: f":\r\nContent-Type: {ct}\r\n".encode() for kind, ct in CONTENT_TYPES.items()},
)


def hit_head(sha256: bytes, h1: bytes, kind: str, size: int) -> bytes:
    """Status line and headers of an in-memory hit, as aiohttp sends `blob_headers`:
    `sha256` raw, `h1` ASCII (b"": none). Built per answer (a few hundred nanoseconds):
    a cache of them per file stops hitting once the store outgrows it."""
    digests, types = _HIT_LINES
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: ",
            str(size).encode(),
            digests,
            base64.b64encode(sha256),
            types[kind],
            b"X-Modmesh-H1: " + h1 + b"\r\n" if h1 else b"",
            b'ETag: "',
            sha256.hex().encode(),
            b'"\r\n',
        )
    )


def _served_head(s: Served, kind: str) -> bytes:
    assert s.body is not None
    return hit_head(bytes.fromhex(s.entry.sha256), (s.entry.h1 or "").encode(), kind, len(s.body))


async def later_answer(
    proxy: ModuleProxy, recorder: RequestRecorder, path: str, from_peer: bool
) -> tuple[bytes, bytes | memoryview, Callable[[float, str | None], None]] | None:
    """The fast path's answer to a hit memory does not hold: the store's small file,
    looked up and read off the event loop (ModuleProxy.lookup), answered and counted as
    the aiohttp handler would. None for anything else (not versioned, not cached, too
    large to hold in memory, an unverified file for a peer, an error): aiohttp answers
    it from scratch, errors included."""
    try:
        req = canonical_request(path) or parse_request(path)
        if not req.versioned:
            return None
        served = await proxy.lookup(req, row=False)
    except Exception:  # aiohttp meets it again and answers it
        return None
    if served is None or served.body is None or (from_peer and served.entry.unverified):
        return None
    proxy.count_hit(req, from_peer)
    return _served_head(served, req.kind), served.body, _logger(recorder, path, req, len(served.body))


def _logger(recorder: RequestRecorder, path: str, req: ModRequest, sent: int) -> Callable[[float, str | None], None]:
    record = recorder.record

    def log(seconds: float, remote: str | None) -> None:
        record("GET", path, 200, req.kind, "hit", "", seconds, sent, remote, req)

    return log


def fast_answer(
    proxy: ModuleProxy, recorder: RequestRecorder, path: str, from_peer: bool
) -> tuple[bytes, bytes | memoryview, Callable[[float, str | None], None]] | None:
    """The raw answer to a GET the node can give from memory at once, or None (the fast
    path then hands the request to aiohttp). A peer's request is answered the same way
    and counted by the same rule (ModuleProxy.count_hit)."""
    hot_hit = proxy.hot_hit(path, from_peer)
    if hot_hit is not None:
        req, record = hot_hit
        held = hot.body(record)
        head = hit_head(hot.sha256(record), hot.h1(record), req.kind, len(held))
        return head, held, _logger(recorder, path, req, len(held))
    if canonical_request(path) is not None:
        return None  # a versioned file, spelled as the go command does: no hot answer, not in memory
    try:
        req = parse_request(path)
    except ModmeshError:
        return None
    hit = proxy.memory_hit(req, from_peer)
    if hit is None:
        return None
    if isinstance(hit, Served):
        assert hit.body is not None
        head = _served_head(hit, req.kind)
        body: bytes | memoryview = hit.body
    else:
        body = hit.body
        fresh_for = max(0, int(proxy.settings.meta_ttl - hit.age))
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + CONTENT_TYPES[req.kind].encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nCache-Control: public, max-age="
            + str(fresh_for).encode()
            + b"\r\nAge: "
            + str(int(hit.age)).encode()
            + b"\r\n"
            + CACHE_HEADER.encode()
            + b": hit\r\n"
        )
    return head, body, _logger(recorder, path, req, len(body))
