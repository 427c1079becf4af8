"""Issue 3 acceptance: the node proxies, caches and verifies a checksum database,
driven by the real go command against a fake database over Go's test corpus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.corpus import servable
from tests.goenv import go_env, run_go
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_e2e_go import MAIN_GO, decode_stream
from tests.upstream_fixture import Fault

pytestmark = pytest.mark.e2e

DB = "sum.example.test"  # does not resolve: a request that bypasses the node fails loudly


@pytest.fixture
async def sumdb(corpus_modules):  # type: ignore[no-untyped-def]
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))))
    db.add_corpus(corpus_modules)
    await db.start()
    yield db
    await db.stop()


def db_spec(db: FakeSumDB) -> tuple[str, ...]:
    return (f"{db.vkey} {db.url}",)


def public_versions(corpus) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{cv.path}@{cv.version}" for cv in servable(corpus)]


async def build_hello(tmp: Path, env: dict[str, str]) -> None:
    src = tmp / "hello"
    src.mkdir(parents=True)
    (src / "go.mod").write_text("module example.com/hellomain\n\ngo 1.21\n\nrequire rsc.io/quote v1.5.2\n")
    (src / "main.go").write_text(MAIN_GO)
    (await run_go(["build", "-o", str(tmp / "hello.bin"), "."], env, cwd=src)).check()


async def test_go_verifies_through_node_then_offline(  # type: ignore[no-untyped-def]
    corpus, corpus_modules, fake_proxy, make_node, sumdb, go_build_cache, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb))
    wanted = [
        "rsc.io/quote@v1.5.2",
        "rsc.io/sampler@v1.3.0",
        "rsc.io/QUOTE@v1.5.3-PRE",
        "golang.org/x/text@v0.0.0-20170915032832-14c0d48ead0c",
    ]
    env = go_env(
        tmp_path / "online", node.url, gosumdb=sumdb.vkey, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache)
    )
    res = (await run_go(["mod", "download", "-json", *wanted], env, cwd=tmp_path)).check()
    assert all("Error" not in o for o in decode_stream(res.stdout))
    await build_hello(tmp_path / "online", env)

    # go's database traffic went through the node: GOSUMDB names a host that does not
    # resolve, the node answered the lookups, and the fixture saw the node's requests.
    async with aiohttp.ClientSession() as s, s.get(node.url + "/metrics") as r:
        metrics = await r.text()
    # (already verified at the door when the node fetched the .mod, so they are hits)
    assert 'modmesh_sumdb_requests_total{cache="hit",db="sum.example.test",endpoint="sumdb-lookup"}' in metrics
    assert 'endpoint="sumdb-tile"' in metrics
    assert sumdb.count("/lookup/rsc.io/quote@v1.5.2") == 1
    assert any("/tile/8/" in p for p in sumdb.log)

    # Upstream and database gone; a fresh machine still downloads AND verifies.
    await up.stop()
    await sumdb.stop()
    env2 = go_env(
        tmp_path / "offline", node.url, gosumdb=sumdb.vkey, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache)
    )
    res = (await run_go(["mod", "download", "-json", *wanted], env2, cwd=tmp_path)).check()
    sums = {f"{o['Path']}@{o['Version']}": o for o in decode_stream(res.stdout)}
    assert all("Error" not in o and o["Sum"].startswith("h1:") for o in sums.values())
    await build_hello(tmp_path / "offline", env2)
    assert "sum.example.test" in (tmp_path / "offline" / "gopath" / "pkg" / "sumdb" / DB / "latest").read_text()


async def test_every_served_module_verifies_offline(  # type: ignore[no-untyped-def]
    corpus, corpus_modules, fake_proxy, make_node, sumdb, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb))
    versions = public_versions(corpus)
    env = go_env(tmp_path / "a", node.url, gosumdb=sumdb.vkey)
    res = await run_go(["mod", "download", "-json", *versions], env, cwd=tmp_path)
    served = [f"{o['Path']}@{o['Version']}" for o in decode_stream(res.stdout) if "Error" not in o]
    assert len(served) > 150, res.stderr[-2000:]
    await node.sumdbs.dbs[0].idle()  # background tile prefetches are done
    await up.stop()
    await sumdb.stop()
    env = go_env(tmp_path / "b", node.url, gosumdb=sumdb.vkey)
    res = (await run_go(["mod", "download", "-json", *served], env, cwd=tmp_path)).check()
    assert all("Error" not in o for o in decode_stream(res.stdout))


async def test_zip_that_differs_from_the_database_is_refused(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, sumdb, tmp_path: Path
) -> None:
    bogus = "h1:" + "A" * 43 + "="
    sumdb.corrupt_record("rsc.io/quote", "v1.5.2", zip_h1=bogus)
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb))
    env = go_env(tmp_path, node.url, gosumdb=sumdb.vkey)
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    assert not res.ok
    err = json.loads(res.stdout)["Error"]
    assert "checksum mismatch for rsc.io/quote@v1.5.2" in err and bogus in err and "h1:" in err
    assert await node.index.get("rsc.io/quote", "v1.5.2", "zip") is None
    assert not [p for p in (node.config.data / "tmp").rglob("*") if p.is_file()]


async def test_a_record_is_fetched_once_while_it_is_verified(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, sumdb
) -> None:
    """A second client that asks while the first's reply is still being checked (its
    tiles on the way) shares that check: the database sees one lookup, not two."""
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb))
    sumdb.inject(r"/tile/", Fault.delay(0.5))
    url = f"{node.url}/sumdb/{DB}/lookup/rsc.io/quote@v1.5.2"
    async with aiohttp.ClientSession() as s:

        async def get() -> tuple[int, bytes]:
            async with s.get(url) as r:
                return r.status, await r.read()

        first = asyncio.ensure_future(get())
        for _ in range(200):  # the reply is in; its tiles are not
            if sumdb.count("/lookup/rsc.io/quote@v1.5.2"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        second = await get()
        assert await first == second and second[0] == 200
    assert sumdb.count("/lookup/rsc.io/quote@v1.5.2") == 1


async def test_forked_database_is_refused_and_reported(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, sumdb, caplog: pytest.LogCaptureFixture
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb))
    base = f"{node.url}/sumdb/{DB}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/lookup/rsc.io/quote@v1.5.2") as r:
            assert r.status == 200
        sumdb.fork()
        async with s.get(f"{base}/lookup/rsc.io/sampler@v1.3.0") as r:
            assert r.status == 502
            assert "forked tree" in await r.text()
        async with s.get(node.url + "/healthz") as r:
            health = await r.json()
        async with s.get(node.url + "/metrics") as r:
            metrics = await r.text()
    assert health["status"] == "degraded" and "forked" in health["sumdb"][0]["fork"]
    assert f'modmesh_sumdb_fork_detected{{db="{DB}"}} 1.0' in metrics
    assert any(r.levelname == "ERROR" and "forked tree" in r.getMessage() for r in caplog.records)
    assert node.sumdbs.dbs[0].store.lookup("rsc.io/sampler", "v1.3.0") is None


async def test_private_modules_never_reach_the_database(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, sumdb, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb), private="rsc.io/sampler")
    env = go_env(tmp_path, node.url, gosumdb=sumdb.vkey, GONOSUMDB="rsc.io/sampler")
    (
        await run_go(["mod", "download", "-json", "rsc.io/sampler@v1.3.0", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    ).check()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/sumdb/{DB}/lookup/rsc.io/sampler@v1.3.0") as r:
            assert r.status == 404 and "private" in await r.text()
    assert await node.index.get("rsc.io/sampler", "v1.3.0", "zip") is not None
    assert sumdb.count("/lookup/rsc.io/quote@v1.5.2") == 1
    assert not any("sampler" in p for p in sumdb.log), sumdb.log


@pytest.mark.parametrize("mode", ["sumdb", "require"])
async def test_wrong_key_is_refused(mode: str, corpus_modules, fake_proxy, make_node, sumdb) -> None:  # type: ignore[no-untyped-def]
    """A database signed with another key is never believed. By default the zip it cannot
    vouch for is served unverified (the go command checks go.sum or its own database);
    with sumdb_verify = "require" it is refused, not cached."""
    sumdb.sign_with(generate_keys(DB))  # same name, another key
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, sumdb=db_spec(sumdb), sumdb_verify=mode)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/sumdb/{DB}/lookup/rsc.io/quote@v1.5.2") as r:
            assert r.status == 502 and "not signed by the configured key" in await r.text()
        async with s.get(f"{node.url}/rsc.io/quote/@v/v1.5.2.zip") as r:
            assert r.status == (200 if mode == "sumdb" else 502)
    assert node.sumdbs.dbs[0].latest is None
    entry = await node.index.get("rsc.io/quote", "v1.5.2", "zip")
    if mode == "require":
        assert entry is None
    else:
        assert entry is not None and entry.unverified and node.health()["status"] == "degraded"
