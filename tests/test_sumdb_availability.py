"""A checksum database that does not answer costs verification, not builds.

By default (`sumdb_verify = "sumdb"`) a public module whose record the database cannot
give is served and cached *unverified*: the go command verifies what it downloads
against go.sum, or skips the database for GONOSUMDB modules, exactly as without the
node. Unverified files are never offered to peers or exported, are reported, and are
checked again in the background once the database answers: confirmed, or (forged)
deleted. `sumdb_verify = "require"` refuses them, as before.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from node.golang import dirhash, modzip
from node.hooks import HOP_HEADER
from node.tools.bundle.export import plan_export
from node.tools.bundle.selection import Selection
from node.tools.doctor.report import diagnose
from tests.goenv import go_env, run_go
from tests.mesh_fixtures import MeshNodeFactory
from tests.modules import module_files
from tests.sumdb_fixture import FakeSumDB, generate_keys

pytestmark = pytest.mark.e2e

DB = "sum.avail.test"
LIB, OTHER, FORGED = "example.com/lib", "example.com/other", "example.com/forged"
V = "v1.0.0"


def lib(module: str, text: str) -> tuple[bytes, bytes, bytes]:
    return module_files(
        module,
        V,
        {
            "go.mod": f"module {module}\n\ngo 1.21\n".encode(),
            "lib.go": f'package lib\n\nfunc Name() string {{ return "{text}" }}\n'.encode(),
        },
    )


GENUINE = {m: {V: lib(m, m)} for m in (LIB, OTHER, FORGED)}
#: What a compromised upstream serves for FORGED: sound, but not what the database logged.
SERVED = {**GENUINE, FORGED: {V: lib(FORGED, "backdoor")}}


def h1_zip(data: bytes, tmp: Path) -> str:
    p = tmp / "h1.zip"
    p.write_bytes(data)
    return modzip.h1_zip(p)


@pytest.fixture
async def db() -> FakeSumDB:  # type: ignore[misc]
    d = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))))
    d.add_corpus(GENUINE)
    await d.start()
    yield d
    await d.stop()


def project(work: Path, module: str, gosum: str = "") -> Path:
    src = work / "src"
    src.mkdir(parents=True)
    (src / "go.mod").write_text(f"module example.com/app\n\ngo 1.21\n\nrequire {module} {V}\n")
    (src / "main.go").write_text(f'package main\n\nimport "{module}"\n\nfunc main() {{ println(lib.Name()) }}\n')
    if gosum:
        (src / "go.sum").write_text(gosum)
    return src


async def health(url: str) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
        return await r.json()  # type: ignore[no-any-return]


async def test_go_builds_through_a_node_while_the_database_is_down_then_it_catches_up(  # type: ignore[no-untyped-def]
    db: FakeSumDB, fake_proxy, make_node, go_build_cache, tmp_path: Path
) -> None:
    up = await fake_proxy(SERVED)
    node = await make_node(up.url, sumdb=(f"{db.vkey} {db.url}",))
    await db.stop()  # a firewall, an outage
    gosum = "".join(
        f"{LIB} {V}{suffix} {h}\n"
        for suffix, h in (("", h1_zip(GENUINE[LIB][V][2], tmp_path)), ("/go.mod", dirhash.h1_gomod(GENUINE[LIB][V][1])))
    )

    # A project whose go.sum holds the hashes, with a fresh module cache: go checks go.sum.
    env = go_env(tmp_path / "a", node.url, gosumdb=db.vkey, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "a.bin"), "."], env, cwd=project(tmp_path / "a", LIB, gosum))).check()
    # A client that skips the database for the module (GONOSUMDB), no go.sum.
    env = go_env(
        tmp_path / "b",
        node.url,
        gosumdb=db.vkey,
        GONOSUMDB=OTHER,
        GOFLAGS="-mod=mod -modcacherw",
        GOCACHE=str(go_build_cache),
    )
    (await run_go(["build", "-o", str(tmp_path / "b.bin"), "."], env, cwd=project(tmp_path / "b", OTHER))).check()
    # And a forged zip, fetched while nothing can tell.
    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/{FORGED}/@v/{V}.zip") as r:
        assert r.status == 200 and await r.read() == SERVED[FORGED][V][2]

    for m, kind in ((LIB, "mod"), (LIB, "zip"), (OTHER, "mod"), (OTHER, "zip"), (FORGED, "zip")):
        e = await node.index.get(m, V, kind)
        assert e is not None and e.unverified, (m, kind)
    h = await health(node.url)
    assert h["status"] == "degraded" and h["unverified"] == 5
    assert any("not confirmed by the checksum database" in r for r in h["reasons"])
    assert node.metrics.registry.get_sample_value("modmesh_unverified_files") == 5
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/_dashboard/data.json") as r:
            assert (await r.json())["store"]["unverified"] == 5
        # Never to peers: a peer's request (hop header) finds nothing unverified.
        async with s.get(f"{node.url}/{LIB}/@v/{V}.zip", headers={HOP_HEADER: "peer"}) as r:
            assert r.status == 404
    plan = await plan_export(node, Selection())
    assert not any(e.module in (LIB, OTHER, FORGED) and e.kind in ("mod", "zip") for e in plan.manifest.entries)
    assert any("not confirmed by the checksum database" in w for w in plan.manifest.warnings)
    report = await diagnose(env, None, node=node.url, timeout=5)
    assert any(c.code == "node-degraded" and "not confirmed" in c.detail for c in report.checks)

    # The database is back. Nobody asks for anything: the node catches up by itself.
    await db.start()
    deadline = time.monotonic() + 60
    while await node.index.count_unverified():
        assert time.monotonic() < deadline, "unverified files were never checked again"
        await asyncio.sleep(0.2)
    for m in (LIB, OTHER):
        for kind in ("mod", "zip"):
            e = await node.index.get(m, V, kind)
            assert e is not None and not e.unverified
    assert await node.index.get(FORGED, V, "zip") is None  # deleted: the database disagrees
    assert node.metrics.registry.get_sample_value("modmesh_reverified_total", {"result": "mismatch"}) == 1
    assert (await health(node.url))["status"] == "ok"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/{LIB}/@v/{V}.zip", headers={HOP_HEADER: "peer"}) as r:
            assert r.status == 200  # confirmed: peers may have it now
        async with s.get(f"{node.url}/{FORGED}/@v/{V}.zip") as r:
            assert r.status == 502 and "checksum mismatch" in await r.text()  # and it stays out


async def test_require_mode_refuses_what_the_database_cannot_confirm(  # type: ignore[no-untyped-def]
    db: FakeSumDB, fake_proxy, make_node, go_build_cache, tmp_path: Path
) -> None:
    up = await fake_proxy(SERVED)
    node = await make_node(up.url, sumdb=(f"{db.vkey} {db.url}",), sumdb_verify="require")
    await db.stop()
    env = go_env(
        tmp_path / "b",
        node.url,
        gosumdb=db.vkey,
        GONOSUMDB=OTHER,
        GOFLAGS="-mod=mod -modcacherw",
        GOCACHE=str(go_build_cache),
    )
    res = await run_go(["build", "-o", str(tmp_path / "b.bin"), "."], env, cwd=project(tmp_path / "b", OTHER))
    assert not res.ok and "502 Bad Gateway" in res.stderr and "did not answer" in res.stderr
    assert await node.index.get(OTHER, V, "zip") is None and await node.index.get(OTHER, V, "mod") is None


async def test_a_peer_gets_a_file_only_once_the_database_confirmed_it(  # type: ignore[no-untyped-def]
    db: FakeSumDB, fake_proxy, make_mesh_node: MeshNodeFactory
) -> None:
    up = await fake_proxy(SERVED)
    spec = (f"{db.vkey} {db.url}",)
    a = await make_mesh_node(up.url, sumdb=spec)
    b = await make_mesh_node("http://127.0.0.1:9", peers=[a.url], sumdb=spec)  # b's upstream is dead
    await db.stop()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{a.url}/{LIB}/@v/{V}.zip") as r:
            assert r.status == 200
        await asyncio.sleep(1.0)  # gossip rounds: b would have learnt of a verified file by now
        assert not b.mesh.catalog.holdings(f"{LIB}@{V}.zip")
        await db.start()
        deadline = time.monotonic() + 60
        while not b.mesh.catalog.holdings(f"{LIB}@{V}.zip"):
            assert time.monotonic() < deadline, "the confirmed file never reached the peer's catalog"
            await asyncio.sleep(0.2)
        async with s.get(f"{b.url}/{LIB}/@v/{V}.zip") as r:
            assert r.status == 200 and await r.read() == GENUINE[LIB][V][2]
    e = await b.node.index.get(LIB, V, "zip")
    assert e is not None and e.source.startswith("peer:") and not e.unverified
