"""The mesh as a node plugin (entry point `modmesh.plugins: mesh`).

Adds the serve flags, the `modmesh peers` command, and runs a `Mesh` on the node
when a secret is configured. Without a secret the mesh stays off and says so;
peers or mDNS requested without one stop the node with a clear message (the
config loader raises MeshConfigError, a ValueError the CLI reports).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any

from node.service import Node

from . import cli
from .config import SETTINGS, flags_from_args, load_mesh_config
from .mesh import Mesh

log = logging.getLogger(__name__)


class MeshPlugin:
    name = "mesh"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.mesh: Mesh | None = None

    def add_serve_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("LAN mesh", "Nodes with the same secret and mesh name share their caches.")
        SETTINGS.add_flags(g)  # the [mesh] settings that declare a flag (sync/config.py)

    def add_commands(self, subparsers: Any) -> None:
        cli.register(subparsers)

    async def start(self, node: Node, args: argparse.Namespace) -> None:
        cfg = load_mesh_config(node.config.sections.get("mesh"), self.env, flags_from_args(args))
        if not cfg.enabled:
            log.info("mesh off: no --mesh-secret-file (or [mesh] secret_file) configured")
            return
        mesh = Mesh(node, cfg)
        try:
            await mesh.start()
        except BaseException:
            await mesh.aclose()
            raise
        self.mesh = mesh

    async def aclose(self) -> None:
        mesh, self.mesh = self.mesh, None
        if mesh is not None:
            await mesh.aclose()
