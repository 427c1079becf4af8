"""The node's aiohttp application: its routes, the GOPROXY handler and the error
mapping. Every GOPROXY request goes through `goproxy`: parse the path (protocol), ask
the proxy core, and turn the answer into a response (responses.py, streaming.py).
Errors from anywhere below become one `text/plain` line the go command will print.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_response import StreamResponse

from node.cache.inflight import Transfer
from node.cache.protocol import parse_request
from node.cache.proxy import ModuleProxy
from node.errors import ModmeshError, error_body
from node.hooks import HOP_HEADER
from node.metrics import CONTENT_TYPE_LATEST, Metrics
from node.server.accesslog import CACHE, REQ
from node.server.aiohttp_adapter import response_started
from node.server.exposure import EXPOSURE, Exposure
from node.server.responses import meta_response, served_response
from node.server.streaming import abort_connection, stream_transfer
from node.server.sumdb_routes import sumdb_response
from node.sumdb.databases import ChecksumDatabases

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[StreamResponse]]
GOPROXY_HANDLER: web.AppKey[Handler] = web.AppKey("goproxy")
Health = Callable[[], dict[str, Any]]


def build_app(
    proxy: ModuleProxy,
    metrics: Metrics,
    health: Health,
    ready: Callable[[], bool],
    sumdbs: ChecksumDatabases | None = None,
    middlewares: Sequence[Middleware] = (),
    write_idle_timeout: float = 60.0,
    *,
    admin: Callable[[web.Request], bool],
) -> web.Application:
    """`admin`: whether a request has admin rights (it sees upstream addresses and
    private module names: exposure.py)."""
    app = web.Application(middlewares=[errors_middleware, *middlewares])
    exposure = app[EXPOSURE] = Exposure(admin, proxy, sumdbs)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(exposure.health(health(), request), headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        ok = ready()
        return web.Response(
            status=200 if ok else 503,
            text="ready\n" if ok else "not ready\n",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_handler(request: web.Request) -> web.Response:
        resp = web.Response(body=exposure.metrics(metrics.registry, request), headers={"Cache-Control": "no-store"})
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
        if response_started(request):
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
        exposure = request.app.get(EXPOSURE)
        body = error_body(e)
        if exposure is not None:  # whoever's text it was (an upstream's 404 may name another)
            body = exposure.mask_text(body.decode()).encode()
        return web.Response(
            status=e.status,
            body=body,
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
