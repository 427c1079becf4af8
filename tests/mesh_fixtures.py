"""Fixtures for mesh tests: real nodes running the real mesh plugin in this process,
a lossy/throttling TCP relay to put between them, and a bounded wait.

Nodes start the way `modmesh serve` starts them (Node.start, plugin.start with
the serve flags as an argparse.Namespace, Node.listen), with the mesh's timings
shrunk through the `[mesh]` config table so that gossip, suspicion and retries
happen in fractions of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from node.service import Node
from node.tools.registry import ADMIN
from sync.mesh import Mesh
from sync.plugin import MeshPlugin
from tests.node_fixtures import node_config

#: Timings for tests: everything in well under a second.
FAST: dict[str, Any] = {
    "gossip_interval": "100ms",
    "request_timeout": "2s",
    "suspect_after": "1s",
    "dead_after": "2.5s",
    "retry_backoff": "100ms",
    "retry_backoff_max": "500ms",
    "peer_timeout": "1s",
    "presync_interval": "150ms",
    "presync_min_score": 0.5,
    "quarantine": "60s",
}


@dataclasses.dataclass
class MeshNode:
    node: Node
    plugin: MeshPlugin
    closed: bool = False

    @property
    def mesh(self) -> Mesh:
        assert self.plugin.mesh is not None, "mesh is off on this node"
        return self.plugin.mesh

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def port(self) -> int:
        return int(self.node.url.rsplit(":", 1)[1])

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.plugin.aclose()
            await self.node.aclose()


def write_secret(path: Path, secret: str | None = None) -> Path:
    path.write_text((secret or secrets.token_hex(32)) + "\n")
    path.chmod(0o600)
    return path


def serve_args(
    peers: Sequence[str] = (), secret: Path | None = None, name: str | None = None, mdns: bool = False
) -> argparse.Namespace:
    """What `modmesh serve` parses from the mesh flags."""
    return argparse.Namespace(
        peer=list(peers) or None,
        no_mdns=None if mdns else True,
        mesh_secret_file=secret,
        mesh_name=name,
        mdns_interface=None,
    )


MeshNodeFactory = Callable[..., Awaitable[MeshNode]]


@pytest.fixture
def mesh_secret(tmp_path: Path) -> Path:
    return write_secret(tmp_path / "mesh.secret")


@pytest.fixture
async def make_mesh_node(tmp_path: Path, mesh_secret: Path) -> AsyncIterator[MeshNodeFactory]:
    """`await make_mesh_node(upstream, peers=[...], mesh={...})`: a node with the mesh on.

    `mesh` overrides [mesh] keys (on top of FAST); `secret=None` uses the shared test
    secret, `secret=False` runs without one; `port` pins the listening port (restarts).
    Every node is closed at teardown, and no mesh task may outlive its node."""
    made: list[MeshNode] = []

    async def make(
        upstream: str,
        *,
        peers: Sequence[str] = (),
        secret: Path | bool | None = None,
        name: str | None = None,
        mesh: dict[str, Any] | None = None,
        data: Path | None = None,
        port: int = 0,
        **overrides: Any,
    ) -> MeshNode:
        section = {**FAST, **(mesh or {})}
        cfg = node_config(data or tmp_path / f"mnode{len(made)}", upstream, sections={"mesh": section}, **overrides)
        secret_path = mesh_secret if secret is None or secret is True else (secret or None)
        node = Node(cfg, admin=ADMIN)
        plugin = MeshPlugin(env={})
        mn = MeshNode(node, plugin)
        made.append(mn)
        await node.start()
        await plugin.start(node, serve_args(peers, secret_path, name))
        await node.listen("127.0.0.1", port)
        return mn

    yield make
    for mn in reversed(made):
        await mn.close()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("mesh:") and not t.done()]
    assert not left, f"mesh tasks still running after close: {left}"


LinkFactory = Callable[..., Awaitable["LossyLink"]]


@pytest.fixture
async def make_link() -> AsyncIterator[LinkFactory]:
    """`await make_link(drop=..., rate=...)`: a started LossyLink, stopped at teardown."""
    links: list[LossyLink] = []

    async def make(**kwargs: Any) -> LossyLink:
        link = LossyLink(**kwargs)
        links.append(link)
        return await link.start()

    yield make
    for link in links:
        await link.stop()


async def wait_for(
    pred: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll until `pred` holds; returns the seconds it took, fails after `timeout`."""
    start = time.monotonic()
    while True:
        got = pred()
        if not isinstance(got, bool):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class LossyLink:
    """A TCP relay on 127.0.0.1 in front of a node: a lossy or slow network link.

    `drop` is the fraction of connections that fail (half refused outright, half cut
    after a few milliseconds, possibly mid-answer); `rate` throttles what flows back
    to the client (bytes/second); `max_life` cuts every connection after that many
    seconds so keep-alive cannot dodge the loss. `stop()` aborts every connection, as
    a crashed machine would. The target port may be set after start (a node is
    told its link's URL before it listens)."""

    def __init__(
        self,
        target_port: int | None = None,
        drop: float = 0.0,
        rate: float | None = None,
        max_life: float | None = None,
        seed: int = 1,
    ) -> None:
        self.target_port = target_port
        self.drop = drop
        self.rate = rate
        self.max_life = max_life
        self.rng = random.Random(seed)
        self.accepted = 0
        self.dropped = 0
        self.bytes_down = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> LossyLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Abort every open connection (the listener stays)."""
        for w in list(self._writers):
            w.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        self.accepted += 1
        up_w: asyncio.StreamWriter | None = None
        try:
            dropped = self.rng.random() < self.drop
            if dropped:
                self.dropped += 1
                if self.rng.random() < 0.5:
                    return
            if self.target_port is None:
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_w)
            pipes = asyncio.gather(self._pipe(reader, up_w, False), self._pipe(up_r, writer, True))
            life = self.rng.uniform(0.0, 0.03) if dropped else self.max_life
            try:
                await asyncio.wait_for(pipes, life)
            except TimeoutError:
                pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
        chunk = max(1024, int(self.rate / 20)) if (down and self.rate) else 64 * 1024
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                start = time.monotonic()
                data = await src.read(chunk)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
                if down:
                    self.bytes_down += len(data)
                    if self.rate:
                        await asyncio.sleep(max(0.0, len(data) / self.rate - (time.monotonic() - start)))
            if dst.can_write_eof():
                dst.write_eof()
