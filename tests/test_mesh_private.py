"""Issue 18: private modules stay private across the mesh, with the real mesh plugin.

Node A has a private route for rsc.io/sampler; node B (same mesh secret) has none.
Both use the same public upstream and the same (fake) public checksum database. A's
clients use the private module and a public one; B pre-syncs at the shipped
pre-sync settings. The private module's name must reach neither the database nor
B's public upstream, B must not take it from A, and B must honour A's pattern for
its own clients, also after a restart with A gone.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from node.config import Route
from node.hooks import PrivateModules
from tests.mesh_fixtures import MeshNode, MeshNodeFactory, wait_for
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.upstream_fixture import FakeProxy, ModuleSet

DB = "sum.example.test"
PRIVATE, PUBLIC = ("rsc.io/sampler", "v1.3.0"), ("rsc.io/quote", "v1.5.2")
#: The shipped pre-sync settings (sync/config.py), over the fixture's shrunk ones.
PRESYNC_DEFAULTS = {"presync_interval": "10s", "presync_min_score": 2, "presync_top_k": 200, "presync_concurrency": 2}


@pytest.fixture
async def sumdb(corpus_modules: ModuleSet) -> AsyncIterator[FakeSumDB]:
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))))
    db.add_corpus(corpus_modules)  # it would confirm the private module: only privacy keeps it away
    await db.start()
    yield db
    await db.stop()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, (await r.read()).decode(errors="replace")


def _named(log: list[str], module: str) -> list[str]:
    return [p for p in log if module in p]


async def test_private_route_never_leaks_through_the_mesh(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node: MeshNodeFactory, sumdb: FakeSumDB, tmp_path: Path
) -> None:
    public: FakeProxy = await fake_proxy(corpus_modules)
    corp: FakeProxy = await fake_proxy(corpus_modules)
    common = {"sumdb": (f"{sumdb.vkey} {sumdb.url}",), "mesh": PRESYNC_DEFAULTS}
    a = await make_mesh_node(public.url, routes=(Route(PRIVATE[0], corp.url),), **common)
    b_data = tmp_path / "b"
    b = await make_mesh_node(public.url, peers=[a.url], data=b_data, **common)
    await wait_for(lambda: b.node.hooks.private(PRIVATE[0]), 10, "B honours A's private pattern")
    assert b.node.hooks.private.foreign(PRIVATE[0]) and not a.node.hooks.private.foreign(PRIVATE[0])
    assert not b.node.hooks.private(PUBLIC[0])

    # A's clients use both modules, the private one most (pre-sync would take it first).
    async with aiohttp.ClientSession() as s:
        for (module, version), rounds in ((PRIVATE, 3), (PUBLIC, 2)):
            for _ in range(rounds):
                for kind in ("info", "mod", "zip"):
                    status, _ = await _get(s, f"{a.url}/{module}/@v/{version}.{kind}")
                    assert status == 200, (module, kind)
    assert corp.count(f"/{PRIVATE[0]}/@v/{PRIVATE[1]}.zip") == 1

    # B pre-syncs the public module at the default pre-sync settings...
    async def presynced(mn: MeshNode, kinds: tuple[str, ...]) -> bool:
        return all([await mn.node.index.get(*PUBLIC, k) is not None for k in kinds])

    # (or leaks the private one: then the failure says so, not a timeout)
    async def settled() -> bool:
        return bool(_named(sumdb.log, PRIVATE[0])) or await presynced(b, ("mod", "info"))

    took = await wait_for(settled, 30, "B pre-syncs A's public module")
    print(f"pre-synced the public module in {took:.1f}s at the default presync_interval")
    assert _named(sumdb.log, PRIVATE[0]) == [], sumdb.log  # A routes it; B never had it to check
    assert await presynced(b, ("mod", "info"))
    assert _named(public.log, PRIVATE[0]) == [], public.log
    # ... and never takes, is offered or is told the name of the private one.
    for kind in ("info", "mod", "zip"):
        assert await b.node.index.get(*PRIVATE, kind) is None
        assert not b.mesh.catalog.holdings(f"{PRIVATE[0]}@{PRIVATE[1]}.{kind}")
    assert (PRIVATE[0], PRIVATE[1]) not in b.mesh.popularity.mesh_scores(time.monotonic())
    page = await a.mesh.inventory_page("", 0, 1000)
    assert {e.module for e in page.entries} >= {PUBLIC[0]} and PRIVATE[0] not in {e.module for e in page.entries}
    assert PRIVATE[0] not in {p.module for p in a.mesh._message(time.monotonic()).popular}

    # B's own clients: B asks no upstream and no database about A's private module.
    async with aiohttp.ClientSession() as s:
        for path in (f"{PRIVATE[0]}/@v/{PRIVATE[1]}.info", f"{PRIVATE[0]}/@v/list", f"{PRIVATE[0]}/@latest"):
            status, body = await _get(s, f"{b.url}/{path}")
            assert status == 404 and "private to another node of the mesh" in body, (path, body)
            assert corp.url not in body and "127.0.0.1" not in body
        status, body = await _get(s, f"{b.url}/sumdb/{DB}/lookup/{PRIVATE[0]}@{PRIVATE[1]}")
        assert status == 404 and "private" in body
        status, _ = await _get(s, f"{b.url}/{PUBLIC[0]}/@v/list")  # public ones still go out
        assert status == 200
    assert _named(sumdb.log, PRIVATE[0]) == [], sumdb.log
    assert _named(public.log, PRIVATE[0]) == [], public.log
    assert _named(sumdb.log, PUBLIC[0]) and _named(public.log, PUBLIC[0])
    assert set(corp.log) == {f"/{PRIVATE[0]}/@v/{PRIVATE[1]}.{k}" for k in ("info", "mod", "zip")}

    # What B tells others: A's declared patterns in its status record.
    (member,) = b.mesh.status()["members"]
    assert member["node_id"] == a.mesh.node_id and member["private"] == [PRIVATE[0]]
    assert a.mesh.status()["private"] == [PRIVATE[0]] and b.mesh.status()["private"] == []

    # B restarts while A is gone: it still honours A's pattern, before hearing from anyone.
    port = b.port
    await b.close()
    await a.close()
    b2 = await make_mesh_node(public.url, peers=[a.url], data=b_data, port=port, **common)
    assert b2.node.hooks.private.foreign(PRIVATE[0])
    async with aiohttp.ClientSession() as s:
        status, body = await _get(s, f"{b2.url}/{PRIVATE[0]}/@v/{PRIVATE[1]}.mod")
    assert status == 404 and "private to another node of the mesh" in body
    assert _named(sumdb.log, PRIVATE[0]) == [] and _named(public.log, PRIVATE[0]) == []
    await b2.close()
    assert not b2.node.hooks.private.sources(), "the mesh's patterns leave with the mesh"


def test_private_modules_own_and_foreign_patterns() -> None:
    p = PrivateModules("corp.example.com,*.internal.test")
    assert p.own_patterns() == ("corp.example.com", "*.internal.test")
    assert p("corp.example.com/x") and p("git.internal.test/y/z") and not p("rsc.io/quote")
    assert not p.foreign("corp.example.com/x")
    assert p.add("mesh:n1", ["rsc.io/sampler", "corp.example.com"])
    assert not p.add("mesh:n1", ["rsc.io/sampler,corp.example.com"])  # the same patterns
    assert p("rsc.io/sampler") and p.foreign("rsc.io/sampler") and not p.foreign("corp.example.com/x")
    assert p.joined == "corp.example.com,*.internal.test,rsc.io/sampler"
    p.own = "rsc.io/sampler"  # this node routes it now: its own, not foreign
    assert not p.foreign("rsc.io/sampler") and p.foreign("corp.example.com/x")
    p.discard("mesh:n1")
    assert not p("corp.example.com/x") and p.sources() == {}
