"""Plugins: how the mesh (package `sync`) joins a node without `node` importing it.

A plugin is found through the `modmesh.plugins` entry point group (pyproject.toml
declares sync's). It may add flags to `modmesh serve`, add its own subcommands,
and is started with the running Node before the node listens, so it can add HTTP
routes, store observers and a peer source (node.hooks).
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

GROUP = "modmesh.plugins"


class Commands(Protocol):
    """A module that adds subcommands to `modmesh` (node/tools/registry.py lists them)."""

    def register(self, subparsers: Any) -> None:
        """Add its parsers (`subparsers.add_parser(...)`) and set each one's `func`."""


class Plugin(Protocol):
    name: str

    def add_serve_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Flags for `modmesh serve` (keep them prefixed or clearly named)."""

    def add_commands(self, subparsers: Any) -> None:
        """Extra subcommands (`subparsers.add_parser(...)`, set `func`)."""

    async def start(self, node: Node, args: argparse.Namespace) -> None:
        """Called after node.start() and before node.listen()."""

    async def aclose(self) -> None:
        """Called before the node closes."""


def load_plugins() -> list[Plugin]:
    plugins: list[Plugin] = []
    for ep in entry_points(group=GROUP):
        try:
            factory = ep.load()
            plugins.append(factory())
        except Exception:  # a broken plugin must not stop the node from serving
            log.exception("cannot load modmesh plugin %s", ep.name)
    return plugins
