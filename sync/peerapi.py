"""The peer API under /_mesh/ (msgpack bodies; /status is JSON for people and tools).

    POST /_mesh/gossip       Gossip in, our Gossip back (push-pull: one round trip
                             informs both sides)
    GET  /_mesh/inventory    ?epoch=E&after=S&limit=N: our index entries after
                             serial S, if E is our epoch; else from the start, `reset`
    GET  /_mesh/status       members, state, last seen, inventory sizes, backlog

Blobs and list/latest are not here: peers fetch them from the GOPROXY endpoints
with the hop header, so they get the same answers, headers and Range support as
any client, from the cache only. Every /_mesh/ request was authenticated by the
middleware in auth.py before a handler runs.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from node.hooks import MeshStatus

from .auth import PEER_ID
from .client import MSGPACK
from .messages import (
    MAX_GOSSIP_BYTES,
    MAX_PAGE_ENTRIES,
    Gossip,
    InventoryPage,
    MessageError,
    decode_gossip,
    encode_gossip,
    encode_page,
)


class MeshAPI(Protocol):
    def on_gossip(self, msg: Gossip, remote: str | None) -> Gossip | None:
        """Absorb a peer's gossip; our reply, or None when it is not of our mesh."""

    async def inventory_page(self, epoch: str, after: int, limit: int) -> InventoryPage: ...

    def status(self) -> MeshStatus: ...


def _bad(text: str, status: int = 400) -> web.Response:
    return web.Response(status=status, text=text + "\n\n", headers={"Cache-Control": "no-store"})


def _msgpack(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=MSGPACK, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, mesh: MeshAPI) -> None:
    async def gossip(request: web.Request) -> web.Response:
        body = await request.read()  # already read (and bounded) by the auth middleware
        if len(body) > MAX_GOSSIP_BYTES:
            return _bad("gossip message too large", 413)
        try:
            msg = decode_gossip(body)
        except MessageError as e:
            return _bad(f"bad gossip message: {e}")
        if msg.node_id != request[PEER_ID]:
            return _bad("gossip node id differs from the signing node")
        reply = mesh.on_gossip(msg, request.remote)
        if reply is None:
            return _bad("not a member of this mesh (other mesh name or protocol)", 409)
        return _msgpack(encode_gossip(reply))

    async def inventory(request: web.Request) -> web.Response:
        q = request.query
        try:
            after = int(q.get("after", "0"))
            limit = int(q.get("limit", str(MAX_PAGE_ENTRIES)))
        except ValueError:
            return _bad("after and limit must be integers")
        if after < 0:
            return _bad("after must not be negative")
        limit = max(1, min(limit, MAX_PAGE_ENTRIES))
        page = await mesh.inventory_page(q.get("epoch", "")[:64], after, limit)
        return _msgpack(encode_page(page))

    async def status(request: web.Request) -> web.Response:
        return web.json_response(mesh.status(), headers={"Cache-Control": "no-store"})

    app.router.add_post("/_mesh/gossip", gossip)
    app.router.add_get("/_mesh/inventory", inventory)
    app.router.add_get("/_mesh/status", status)
