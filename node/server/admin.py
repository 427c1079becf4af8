"""Admin endpoints under `/_admin/` (export, import, doctor, ...).

They can read the whole cache and write into it, so they answer the admin token
(`admin_token_file`) or, without one, loopback clients only (node/access.py
enforces it). Each feature module that has
admin endpoints provides `admin_routes(node) -> list[web.RouteDef]` and is listed
in ADMIN_MODULES.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from node.service import Node

PREFIX = "/_admin/"
ADMIN_MODULES: list[str] = [
    "node.server.dashboard",
    "node.tools.doctor.node",
    "node.tools.storage",
    "node.tools.bundle.admin",
]


def add_admin_routes(app: web.Application, node: Node) -> None:
    routes: list[web.RouteDef] = []
    for name in ADMIN_MODULES:
        routes.extend(importlib.import_module(name).admin_routes(node))
    app.router.add_routes(routes)
