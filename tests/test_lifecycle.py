"""A node's parts are built in order and released in reverse (one AsyncExitStack):
after aclose(), and after a start() that failed half-way, nothing is left open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node import __version__
from node.service import Node
from node.sumdb.spec import SumDBConfigError
from tests.node_fixtures import node_config


async def test_a_start_that_fails_half_way_releases_what_it_built(tmp_path: Path) -> None:
    # The checksum database spec is read after the store, the index and the HTTP session
    # exist: a bad one must not leave them open (or the temp directory behind).
    node = Node(node_config(tmp_path / "d", "off", sumdb=("not a key",)))
    with pytest.raises(SumDBConfigError):
        await node.start()
    assert node.index._db is None
    assert node._session is not None and node._session.closed
    assert not node.store.tmp_dir.exists()


async def test_aclose_releases_every_part_in_reverse(tmp_path: Path) -> None:
    node = Node(node_config(tmp_path / "d", "off"))
    await node.start()
    await node.listen("127.0.0.1", 0)
    before = {t for t in asyncio.all_tasks() if not t.done()}
    assert any("_stats_loop" in repr(t) for t in before)
    await node.aclose()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()]
    assert not left, left
    assert node.index._db is None and node._session is not None and node._session.closed
    assert not node.store.tmp_dir.exists()
    assert node.health()["version"] == __version__ != "0.0.0+unknown"  # from the package metadata
