"""Admin endpoints under `/_admin/` (export, import, doctor, ...).

They can read the whole cache and write into it, so they answer loopback clients
only (an admin token comes with site operations). Each feature module that has
admin endpoints provides `admin_routes(node) -> list[web.RouteDef]` and is listed
in ADMIN_MODULES.
"""

from __future__ import annotations

import importlib
import ipaddress
from typing import TYPE_CHECKING

from aiohttp import web

from .app import Handler
from .errors import ModmeshError

if TYPE_CHECKING:
    from .service import Node

PREFIX = "/_admin/"
ADMIN_MODULES: list[str] = []


class Forbidden(ModmeshError):
    status = 403


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PREFIX) and not _is_loopback(request.remote):
        raise Forbidden("admin endpoints answer loopback clients only")
    return await handler(request)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def add_admin_routes(app: web.Application, node: Node) -> None:
    routes: list[web.RouteDef] = []
    for name in ADMIN_MODULES:
        routes.extend(importlib.import_module(name).admin_routes(node))
    app.router.add_routes(routes)
