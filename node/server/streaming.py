"""Sending a file that is still downloading (or that the store could not take): every
byte of the verified file or an aborted connection, and a client that stops reading
is cut off (write_idle_timeout)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.web_response import StreamResponse

from node.cache.inflight import Aborted, Transfer, describe, send
from node.metrics import Metrics
from node.server.accesslog import CACHE, SENT, UPSTREAM
from node.server.responses import CACHE_HEADER, CONTENT_TYPES, IMMUTABLE

log = logging.getLogger(__name__)


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
