"""HTTP layer: routes, responses, the error mapping and the access log.

Every GOPROXY request goes through `goproxy`: parse the path (protocol), ask the
proxy core, and turn the answer into a response with the right headers. Errors
from anywhere below become one `text/plain` line the go command will print.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from node.cache.inflight import CHUNK, Aborted, Transfer, describe, send
from node.cache.model import MetaAnswer, Served
from node.cache.protocol import ModRequest, parse_request
from node.cache.proxy import ModuleProxy
from node.errors import InvalidRequest, ModmeshError, NotFound, error_body
from node.golang import modpath
from node.metrics import CONTENT_TYPE_LATEST, Metrics
from node.server.fastpath import FastServer
from node.sumdb import tiles, tlog
from node.sumdb.databases import ChecksumDatabases

log = logging.getLogger(__name__)
access_log = logging.getLogger("modmesh.access")

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
HOP_HEADER = "X-Modmesh-Hop"
STALE_HEADER = "X-Modmesh-Stale"

Handler = Callable[[web.Request], Awaitable[StreamResponse]]
GOPROXY_HANDLER: web.AppKey[Handler] = web.AppKey("goproxy")

# Per-request facts the access log reports.
REQ = web.RequestKey("req", ModRequest)
CACHE = web.RequestKey("cache", str)
UPSTREAM = web.RequestKey("upstream", str)
KIND = web.RequestKey("kind", str)  # for requests that are not a ModRequest (sumdb)
SENT = web.RequestKey("sent", int)  # body bytes of a streamed answer
Health = Callable[[], dict[str, Any]]


def build_app(
    proxy: ModuleProxy,
    metrics: Metrics,
    health: Health,
    ready: Callable[[], bool],
    sumdbs: ChecksumDatabases | None = None,
    middlewares: Sequence[Middleware] = (),
    write_idle_timeout: float = 60.0,
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, *middlewares])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(health(), headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        ok = ready()
        return web.Response(
            status=200 if ok else 503,
            text="ready\n" if ok else "not ready\n",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_handler(request: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render(), headers={"Cache-Control": "no-store"})
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def goproxy(request: web.Request) -> StreamResponse:
        req = parse_request(request.path)
        request[REQ] = req
        # A request another node forwards is answered from the cache only: no loops.
        local_only = HOP_HEADER in request.headers
        if req.versioned:
            res = await proxy.versioned(req, local_only)
            if isinstance(res, Transfer):
                return await stream_transfer(request, res, write_idle_timeout, metrics)
            return served_response(req, res, request)
        return meta_response(req, await proxy.meta(req, local_only), proxy.settings.meta_ttl, request)

    async def sumdb(request: web.Request) -> web.Response:
        return await sumdb_response(request, request.path[len("/sumdb/") :], sumdbs, metrics)

    app.router.add_get(r"/sumdb/{tail:[\s\S]*}", sumdb)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app[GOPROXY_HANDLER] = goproxy
    return app


def add_goproxy_route(app: web.Application) -> None:
    """The catch-all GOPROXY route goes last, after every other feature's routes."""
    app.router.add_get(r"/{tail:[\s\S]*}", app[GOPROXY_HANDLER])


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> StreamResponse:
    try:
        return await handler(request)
    except ConnectionResetError:
        raise
    except Exception as e:
        if request.writer.output_size > 0:
            # A response is on its way: an error now can only cut it, never end it cleanly.
            if not isinstance(e, ModmeshError):
                log.error("error while sending %s", request.path, exc_info=e)
            abort_connection(request)
            return web.Response(status=500)
        return error_response(request, e)


def error_response(request: web.Request, e: Exception) -> web.Response:
    """The one-line text/plain answer the go command prints, for any error."""
    if isinstance(e, ModmeshError):
        request[CACHE] = "error"
        return web.Response(
            status=e.status,
            body=error_body(e),
            content_type="text/plain",
            charset="utf-8",
            headers={"Cache-Control": e.cache_control},
        )
    if isinstance(e, web.HTTPException):
        if e.status < 400:
            raise e
        # aiohttp's own 404/405: keep the one-line text/plain shape of all our errors.
        headers = {"Cache-Control": "no-store"}
        if "Allow" in e.headers:
            headers["Allow"] = e.headers["Allow"]
        return web.Response(status=e.status, text=f"{e.reason}\n\n", headers=headers)
    log.error("internal error on %s", request.path, exc_info=e)
    return web.Response(
        status=500,
        text="internal error in the module proxy (logged)\n\n",
        headers={"Cache-Control": "no-store"},
    )


@functools.lru_cache(maxsize=8192)
def _blob_headers(sha256: str, h1: str | None, kind: str, cache: str, in_memory: bool) -> Mapping[str, str]:
    """Response headers of a versioned file; hot hits reuse them (they never change)."""
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
    headers = _blob_headers(s.entry.sha256, s.entry.h1, req.kind, s.cache, s.body is not None)
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


class ClientStalled(Exception):
    """The client took no bytes for the write-idle time."""


class ClientSink:
    """Writes to one client. One that takes no bytes for `idle` seconds is cut: it must
    never hold a download, its memory or other clients (a slow one that keeps reading
    is served at its pace)."""

    def __init__(self, request: web.BaseRequest, resp: web.StreamResponse, idle: float) -> None:
        self.request = request
        self.resp = resp
        self.idle = idle
        self.sent = 0

    async def write(self, data: bytes) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        loop = asyncio.get_running_loop()
        writing = asyncio.ensure_future(self.resp.write(data))
        try:
            # Waiting means the transport's buffer is over its high-water mark; any
            # byte the client takes shrinks it. Look a few times per idle period.
            pending, moved_at = transport.get_write_buffer_size(), loop.time()
            step = min(5.0, self.idle / 4)
            while True:
                done, _ = await asyncio.wait((writing,), timeout=step)
                if done:
                    writing.result()
                    break
                now, at = transport.get_write_buffer_size(), loop.time()
                if now < pending:
                    pending, moved_at = now, at
                elif at - moved_at >= self.idle:
                    raise ClientStalled(f"it took no bytes for {at - moved_at:.0f}s")
        finally:
            if not writing.done():
                writing.cancel()
        self.sent += len(data)
        self.request[SENT] = self.sent


def abort_connection(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()


async def stream_transfer(
    request: web.Request, transfer: Transfer, write_idle: float, metrics: Metrics
) -> StreamResponse:
    """Send a file that is still downloading (or that the store could not take) to one
    client: every byte of the verified file, or an aborted connection (inflight.send)."""
    with transfer:
        dl = transfer.dl
        request[CACHE] = "miss"
        resp = web.StreamResponse(
            headers={
                CACHE_HEADER: "miss",
                "Cache-Control": IMMUTABLE,
                "Content-Type": CONTENT_TYPES[dl.req.kind],
            }
        )
        size = dl.written if dl.finished else dl.expected
        if size is not None:
            resp.content_length = size
        await resp.prepare(request)
        sink = ClientSink(request, resp, write_idle)
        try:
            await send(transfer, sink)
        except Aborted as e:
            request[UPSTREAM] = dl.source
            log.info("cutting the transfer of %s to %s: %s", dl.req.key, request.remote, describe(e.reason))
            abort_connection(request)
            return resp
        except ClientStalled as e:
            metrics.stalled_clients.inc()
            log.info("cutting %s off %s at byte %d: %s", request.remote, dl.req.key, sink.sent, e)
            abort_connection(request)
            return resp
        request[UPSTREAM] = dl.source
        await resp.write_eof()
        return resp


def access_logger(recorder: RequestRecorder) -> type[AbstractAccessLogger]:
    """aiohttp builds the access logger itself, so bind the node's recorder here."""

    class Logger(AccessLogger):
        pass

    Logger.recorder = recorder
    return Logger


async def sumdb_response(
    request: web.Request, rest: str, sumdbs: ChecksumDatabases | None, metrics: Metrics
) -> web.Response:
    """`/sumdb/<db>/{supported,latest,lookup/<m>@<v>,tile/...}`: verified and cached."""
    routed = sumdbs.route(rest) if sumdbs is not None else None
    if routed is None:
        raise NotFound("this node does not proxy that checksum database")
    db, endpoint = routed
    text = "text/plain; charset=utf-8"
    if endpoint == "supported":
        request[KIND] = "sumdb-supported"
        return web.Response(body=b"", headers={"Cache-Control": "public, max-age=3600"})
    if endpoint == "latest":
        request[KIND] = "sumdb-latest"
        body, cache = await db.latest_signed()
        headers = {"Cache-Control": f"public, max-age={int(db.latest_ttl)}", CACHE_HEADER: cache}
        if cache == "stale":
            headers[STALE_HEADER] = "upstream-failed"
            headers["Cache-Control"] = "public, max-age=0"
    elif endpoint.startswith("lookup/"):
        request[KIND] = "sumdb-lookup"
        module, version = _lookup_target(endpoint[len("lookup/") :])
        assert sumdbs is not None
        if sumdbs.is_private(module):
            raise NotFound(f"{module} matches this node's private patterns; it is not sent to a checksum database")
        body, cache = await db.lookup(module, version)
        headers = {"Cache-Control": "public, max-age=86400", CACHE_HEADER: cache}
    elif endpoint.startswith("tile/"):
        request[KIND] = "sumdb-tile"
        try:
            tile = tiles.parse_tile_path(endpoint)
        except tlog.TlogError as e:
            raise NotFound(f"malformed tile path: {e}") from None
        body, cache = await db.tile(tile)
        headers = {
            "Cache-Control": IMMUTABLE if tile.full else "public, max-age=60",
            CACHE_HEADER: cache,
        }
        text = "application/octet-stream"
    else:
        raise NotFound(f"unknown checksum database endpoint {endpoint[:60]!r}")
    request[CACHE] = cache
    metrics.sumdb_requests.labels(db.name, request[KIND], cache).inc()
    return web.Response(body=body, headers={**headers, "Content-Type": text})


def _lookup_target(target: str) -> tuple[str, str]:
    esc_m, at, esc_v = target.rpartition("@")
    if not at:
        raise NotFound("lookup path must be <module>@<version>")
    try:
        module, version = modpath.unescape_path(esc_m), modpath.unescape_version(esc_v)
        modpath.check(module, version)
    except ValueError as e:
        raise InvalidRequest(f"invalid lookup: {e}") from None
    if modpath.canonical_version(version) != version:
        raise NotFound(f"{module}@{version}: not a canonical version")
    return module, version


class FastPathRunner(web.AppRunner):
    """Answers in-memory cache hits below aiohttp (node/fastpath.py); everything else
    goes to the application as usual. Only used while client access is open."""

    def __init__(
        self,
        app: web.Application,
        proxy: ModuleProxy,
        recorder: RequestRecorder,
        write_idle: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.proxy = proxy
        self.recorder = recorder
        self.write_idle = write_idle

    async def _make_server(self) -> web.Server:
        await super()._make_server()  # startup signals, freezing
        return FastServer(
            self._answer,
            self.app._handle,
            request_factory=self.app._make_request,
            write_idle=self.write_idle,
            **self._kwargs,
        )

    def _answer(self, path: str) -> tuple[bytes, bytes, Callable[[float, str | None], None]] | None:
        try:
            req = parse_request(path)
        except ModmeshError:
            return None
        hit = self.proxy.memory_hit(req)
        if hit is None:
            return None
        if isinstance(hit, Served):
            assert hit.body is not None
            head = _raw_blob_head(hit.entry.sha256, hit.entry.h1, req.kind, len(hit.body))
            body = hit.body
        else:
            body = hit.body
            fresh_for = max(0, int(self.proxy.settings.meta_ttl - hit.age))
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
        record = self.recorder.record
        sent = len(body)

        def log(seconds: float, remote: str | None) -> None:
            record("GET", path, 200, req.kind, "hit", "", seconds, sent, remote, req)

        return head, body, log


@functools.lru_cache(maxsize=8192)
def _raw_blob_head(sha256: str, h1: str | None, kind: str, size: int) -> bytes:
    """Status line and headers of an in-memory hit, as aiohttp would send them."""
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {size}"]
    lines += [f"{k}: {v}" for k, v in _blob_headers(sha256, h1, kind, "hit", True).items()]
    return ("\r\n".join(lines) + "\r\n").encode()


class RequestRecorder:
    """Request metrics and the one structured access-log line, for aiohttp's access
    logger and the fast path alike."""

    def __init__(self, metrics: Metrics, logger: logging.Logger) -> None:
        self.metrics = metrics
        self.logger = logger
        # labels() costs a lock and a dict walk: once per label set.
        self._counters: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    def record(
        self,
        method: str,
        path: str,
        status: int,
        kind: str,
        cache: str,
        upstream: str,
        seconds: float,
        sent: int,
        remote: str | None,
        req: ModRequest | None,
    ) -> None:
        key = (kind, status, cache)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = (
                self.metrics.requests.labels(kind, str(status), cache or "none"),
                self.metrics.bytes_served.labels(kind),
            )
        counters[0].inc()
        counters[1].inc(sent)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "method": method,
            "path": path,
            "status": status,
            "kind": kind,
            "cache": cache,
            "upstream": upstream,
            "ms": round(seconds * 1000, 2),
            "bytes": sent,
            "remote": remote,
        }
        if req is not None:
            fields["module"] = req.module
            if req.version:
                fields["version"] = req.version
        self.logger.info("%s %s %s", method, path, status, extra={"fields": fields})


class AccessLogger(AbstractAccessLogger):
    """Called by aiohttp after each response went out (so the byte count is real)."""

    recorder: RequestRecorder

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        req: ModRequest | None = request.get(REQ)
        kind = req.kind if req else request.get(KIND) or _endpoint_kind(request.path)
        self.recorder.record(
            request.method,
            request.path,
            response.status,
            kind,
            request.get(CACHE, ""),
            request.get(UPSTREAM, ""),
            time,
            _body_bytes(request, response),
            request.remote,
            req,
        )


def _body_bytes(request: BaseRequest, response: StreamResponse) -> int:
    if request.method == "HEAD":
        return 0
    streamed: int | None = request.get(SENT)
    if streamed is not None:
        return streamed
    # body_length counts the header bytes too; Content-Length is the body.
    return response.content_length if response.content_length is not None else response.body_length


def _endpoint_kind(path: str) -> str:
    return path.strip("/") if path in ("/healthz", "/readyz", "/metrics") else "other"
