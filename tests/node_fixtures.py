"""Fixtures that run real nodes (the real app, on 127.0.0.1, in this process)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.service import Node
from node.tools.registry import ADMIN

NodeFactory = Callable[..., Awaitable[Node]]


def node_config(data: Path, upstream: str, **overrides: Any) -> Config:
    """A config for tests: short timeouts so failure paths run in well under a second."""
    base = Config(
        listen="127.0.0.1:0",
        data=data,
        upstream=upstream,
        connect_timeout=2.0,
        read_timeout=2.0,
        small_timeout=5.0,
        breaker_reset=1.0,
        log_format="text",
        sumdb=(),  # no checksum database unless a test configures one
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start nodes on ephemeral ports; every one is closed at teardown."""
    nodes: list[Node] = []

    async def make(upstream: str, data: Path | None = None, **overrides: Any) -> Node:
        cfg = node_config(data or tmp_path / f"node{len(nodes)}", upstream, **overrides)
        node = Node(cfg, admin=ADMIN)
        await node.start()
        nodes.append(node)
        await node.listen("127.0.0.1", 0)
        return node

    yield make
    for n in reversed(nodes):
        await n.aclose()
