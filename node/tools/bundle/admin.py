"""A node's bundle endpoints, the server side of `export --node` / `import --node`.

    POST /_admin/export          JSON selection -> the bundle (application/x-tar,
                                 exact Content-Length; the manifest comes first)
    GET  /_admin/export?module=PATTERN&since=DATE   the same, for curl
    POST /_admin/import?source=NAME                 body: a bundle -> JSON report

An export that cannot be finished is cut short: the client sees a short body,
never a complete bad bundle.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from node.errors import InvalidRequest
from node.server.streaming import ClientSink, ClientStalled, abort_connection
from node.tools.bundle.export import ExportPlan, plan_export, write_bundle
from node.tools.bundle.format import BundleError
from node.tools.bundle.importing import import_stream
from node.tools.bundle.selection import Selection, SelectionError, parse_since
from node.tools.bundle.tar import CONTENT_TYPE, TarReader

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)


def admin_routes(node: Node) -> list[web.RouteDef]:
    async def export_get(request: web.Request) -> web.StreamResponse:
        try:
            since = request.query.get("since")
            sel = Selection(tuple(request.query.getall("module", [])), None, parse_since(since) if since else None)
        except SelectionError as e:
            raise InvalidRequest(str(e)) from None
        return await _send_bundle(request, node, sel)

    async def export_post(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise SelectionError("the body must be a JSON object")
            sel = Selection.from_json(body)
        except (ValueError, SelectionError, BundleError) as e:
            raise InvalidRequest(f"export selection: {e}") from None
        return await _send_bundle(request, node, sel)

    async def import_post(request: web.Request) -> web.StreamResponse:
        source = request.query.get("source", "upload")[:200]
        report = await import_stream(node, TarReader(request.content), f"import {source}")
        try:
            c = report.counts()
            log.info(
                "import %s: %d admitted, %d present, %d refused, %d skipped%s",
                source,
                c["admitted"],
                c["present"],
                c["refused"],
                c["skipped"],
                f"; {report.errors[0]}" if report.errors else "",
            )
            # The report's JSON, made and sent a page at a time (made in a thread).
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-store"})
            await resp.prepare(request)
            chunks = report.json_chunks()
            while chunk := await asyncio.to_thread(next, chunks, b""):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            await asyncio.to_thread(report.close)

    return [
        web.get("/_admin/export", export_get),
        web.post("/_admin/export", export_post),
        web.post("/_admin/import", import_post),
    ]


async def _send_bundle(request: web.Request, node: Node, sel: Selection) -> web.StreamResponse:
    plan = await plan_export(node, sel)
    try:
        return await _stream(request, node, plan)
    finally:
        plan.close()


async def _stream(request: web.Request, node: Node, plan: ExportPlan) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="modmesh-bundle.tar"',
        }
    )
    resp.content_length = plan.tar_size()
    await resp.prepare(request)
    sink = ClientSink(request, resp, node.config.write_idle_timeout)
    try:
        await write_bundle(plan, sink.write)
    except (BundleError, ClientStalled, OSError) as e:
        if not isinstance(e, ConnectionResetError):
            log.error("export to %s stopped: %s", request.remote, e)
        abort_connection(request)  # the client sees a short body, never a complete bad bundle
        return resp
    await resp.write_eof()
    return resp
