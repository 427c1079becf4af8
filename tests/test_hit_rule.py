"""One rule for a hit, on the fast path and the aiohttp path alike: a client's use
counts (the index's hits, the mesh's popularity); a peer's pull, marked by the hop
header, is no local use and counts for neither."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from node.cache.protocol import ModRequest
from node.hooks import HOP_HEADER
from tests.mesh_fixtures import MeshNodeFactory, wait_for
from tests.modules import big_module, module_files, module_set

M, V = "example.com/popular", "v1.0.0"
SMALL = module_files(M, V)  # its .info lives in memory: the fast path answers it
BIG = big_module("example.com/big", V, 200_000)  # a zip above the in-memory size: aiohttp sends it


class Counting:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def accessed(self, req: ModRequest, cache: str) -> None:
        self.seen.append((req.key, cache))


async def hits(node, module: str, version: str, kind: str) -> int:  # type: ignore[no-untyped-def]
    await node.index.flush_access()
    async with node.index.db.execute(
        "SELECT hits FROM entries WHERE module=? AND version=? AND kind=?", (module, version, kind)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else -1


async def test_hop_header_requests_count_for_nothing_on_either_path(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(module_set((M, V, SMALL), ("example.com/big", V, BIG)))
    node = await make_node(up.url)
    observer = Counting()
    node.hooks.access.append(observer)
    paths = {
        "fast": (f"/{M}/@v/{V}.info", M, "info"),
        "aiohttp": (f"/example.com/big/@v/{V}.zip", "example.com/big", "zip"),
    }
    async with aiohttp.ClientSession() as s:
        for path, module, kind in paths.values():
            for _ in range(2):  # a miss, then a hit
                async with s.get(node.url + path) as r:
                    assert r.status == 200
            counted = await hits(node, module, V, kind)
            seen = len(observer.seen)
            for _ in range(3):  # a peer's pulls
                async with s.get(node.url + path, headers={HOP_HEADER: "peer-b"}) as r:
                    assert r.status == 200 and r.headers["X-Modmesh-Cache"] == "hit"
            assert await hits(node, module, V, kind) == counted, path
            assert len(observer.seen) == seen, observer.seen[seen:]
            async with s.get(node.url + path) as r:  # and a client's hit still counts
                assert r.status == 200
            assert await hits(node, module, V, kind) == counted + 1
            assert observer.seen[-1] == (ModRequest(module, V, kind).key, "hit")  # type: ignore[arg-type]
    assert node._runner is not None and node._runner.server is not None


async def test_a_peers_pull_of_an_in_memory_file_leaves_local_popularity_unchanged(  # type: ignore[no-untyped-def]
    fake_proxy, make_mesh_node: MeshNodeFactory
) -> None:
    up = await fake_proxy(module_set((M, V, SMALL)))
    a = await make_mesh_node(up.url)
    b = await make_mesh_node("http://127.0.0.1:9", peers=[a.url])  # b can only ask a
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # a's own client: a miss, then an in-memory hit
            async with s.get(f"{a.url}/{M}/@v/{V}.info") as r:
                assert r.status == 200
        before = a.mesh.popularity.local_score(M, V, time.monotonic())
        counted = await hits(a.node, M, V, "info")
        await wait_for(lambda: bool(b.mesh.catalog.holdings(f"{M}@{V}.info")), 10, "b learns that a holds it")
        for i in range(3):  # b's clients ask b, b pulls from a (the hop header), a answers from memory
            await b.node.index.delete(M, V, "info")
            b.node.proxy.forget(ModRequest(M, V, "info"))
            async with s.get(f"{b.url}/{M}/@v/{V}.info") as r:
                assert r.status == 200 and await r.read() == SMALL[0], i
            e = await b.node.index.get(M, V, "info")
            assert e is not None and e.source.startswith("peer:")
        await asyncio.sleep(0)
    assert a.mesh.popularity.local_score(M, V, time.monotonic()) <= before + 1e-9
    assert await hits(a.node, M, V, "info") == counted
