"""End to end: the real go command against a node whose upstream serves Go's test corpus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from node.golang.modpath import escape_path, escape_version
from node.golang.modzip import h1_zip
from tests.corpus import broken, servable
from tests.goenv import decode_stream, go_env, remove_modcache, run_go
from tests.upstream_fixture import Fault

pytestmark = pytest.mark.e2e

MAIN_GO = """package main

import (
	"fmt"

	"rsc.io/quote"
)

func main() { fmt.Println(quote.Hello()) }
"""


async def test_whole_corpus_downloads_through_node(  # type: ignore[no-untyped-def]
    corpus, corpus_modules, fake_proxy, make_node, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url)
    versions = servable(corpus)
    assert len(versions) > 180
    env = go_env(tmp_path, node.url)
    res = await run_go(["mod", "download", "-json", *(f"{cv.path}@{cv.version}" for cv in versions)], env, cwd=tmp_path)
    got = {f"{o['Path']}@{o['Version']}": o for o in decode_stream(res.stdout)}
    assert len(got) == len(versions), res.stderr[-2000:]
    for cv in versions:
        o = got[f"{cv.path}@{cv.version}"]
        assert "Error" not in o, o  # every one, .mod files that name another module included
        zip_entry = await node.index.get(cv.path, cv.version, "zip")
        mod_entry = await node.index.get(cv.path, cv.version, "mod")
        assert zip_entry is not None and mod_entry is not None
        assert o["Sum"] == zip_entry.h1, cv.key
        assert o["GoModSum"] == mod_entry.h1, cv.key


async def test_corpus_bad_zips_refused_toolchains_served(  # type: ignore[no-untyped-def]
    corpus, corpus_modules, fake_proxy, make_node, tmp_path: Path
) -> None:
    """The corpus' deliberately malformed zips never enter the store; the toolchain
    zips (which go only takes with a checksum database, issue 3) pass the door."""
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url)
    bad = [cv for cv, why in broken(corpus) if "zip" in why or "writer" in why]
    toolchains = [cv for cv, why in broken(corpus) if cv.path == "golang.org/toolchain"]
    assert len(bad) >= 5 and len(toolchains) > 50
    async with aiohttp.ClientSession() as s:
        for cv in bad:
            async with s.get(f"{node.url}/{escape_path(cv.path)}/@v/{escape_version(cv.version)}.zip") as r:
                assert r.status == 502, cv.key
                assert "breaks the module zip rules" in await r.text()
            assert await node.index.get(cv.path, cv.version, "zip") is None
        for cv in toolchains:
            async with s.get(f"{node.url}/{escape_path(cv.path)}/@v/{escape_version(cv.version)}.zip") as r:
                body = await r.read()
                assert r.status == 200, cv.key
                served = tmp_path / "t.zip"
                served.write_bytes(body)
                assert body == corpus_modules[cv.path][cv.version][2]
                assert r.headers["X-Modmesh-H1"] == h1_zip(served)


async def _main_module(tmp_path: Path) -> Path:
    src = tmp_path / "hello"
    src.mkdir()
    (src / "go.mod").write_text("module example.com/hellomain\n\ngo 1.21\n\nrequire rsc.io/quote v1.5.2\n")
    (src / "main.go").write_text(MAIN_GO)
    return src


async def test_build_list_get_then_offline(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, go_build_cache, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, meta_ttl=0.2, meta_stale_window=0)
    src = await _main_module(tmp_path)
    env = go_env(tmp_path / "go1", node.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))

    (await run_go(["build", "-o", str(tmp_path / "hello.bin"), "."], env, cwd=src)).check()
    res = (await run_go(["list", "-m", "-versions", "rsc.io/quote"], env, cwd=tmp_path)).check()
    assert res.stdout.split()[:1] == ["rsc.io/quote"] and "v1.5.2" in res.stdout.split()
    res = (await run_go(["get", "rsc.io/quote@latest"], env, cwd=src)).check()
    assert "rsc.io/quote v1.5.2" in (src / "go.mod").read_text()
    res = (await run_go(["list", "-m", "-json", "rsc.io/quote@latest"], env, cwd=tmp_path)).check()
    assert json.loads(res.stdout)["Version"] == "v1.5.2"

    async with aiohttp.ClientSession() as s:
        async with s.get(node.url + "/rsc.io/quote/@latest") as r:
            assert r.status == 200  # go resolved latest from the list; cache @latest too

    # The upstream goes away; a fresh machine (new GOPATH, GOMODCACHE) still builds.
    await up.stop()
    remove_modcache(tmp_path / "go1" / "modcache")
    env2 = go_env(tmp_path / "go2", node.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "hello2.bin"), "."], env2, cwd=src)).check()
    res = (await run_go(["list", "-m", "-versions", "rsc.io/quote"], env2, cwd=tmp_path)).check()
    assert "v1.5.2" in res.stdout.split()
    await asyncio.sleep(0.25)  # past meta_ttl even when the build above took less
    async with aiohttp.ClientSession() as s:
        for path in ("/rsc.io/quote/@v/list", "/rsc.io/quote/@latest"):
            async with s.get(node.url + path) as r:
                assert r.status == 200
                assert r.headers["X-Modmesh-Cache"] == "stale"
                assert r.headers["X-Modmesh-Stale"] == "upstream-failed"


async def test_go_prints_the_nodes_reason_and_pipe_falls_through(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, tmp_path: Path
) -> None:
    a, b = await fake_proxy(corpus_modules), await fake_proxy(corpus_modules)
    a.inject("/rsc.io/quote/@v/v1.5.2.zip", Fault.status(500, b"disk on fire"))
    a.inject("/rsc.io/quote/@v/v1.5.1.zip", Fault.wrong_body(corpus_modules["rsc.io/quote"]["v1.5.2"][2]))
    strict = await make_node(a.url)
    env = go_env(tmp_path / "g1", strict.url)
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    assert not res.ok
    err = json.loads(res.stdout)["Error"]
    assert "502 Bad Gateway" in err and "answered 500" in err and "disk on fire" in err
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.1"], env, cwd=tmp_path)
    err = json.loads(res.stdout)["Error"]
    assert "unzip rsc.io/quote/@v/v1.5.1.zip" in err and "unexpected file" in err, err
    assert a.url.removeprefix("http://") not in err  # the node never names its upstreams

    # With `|` the same failures fall through to b, and go gets sound bytes.
    tolerant = await make_node(f"{a.url}|{b.url}")
    env = go_env(tmp_path / "g2", tolerant.url)
    res = (
        await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2", "rsc.io/quote@v1.5.1"], env, cwd=tmp_path)
    ).check()
    sums = {o["Version"]: o["Sum"] for o in decode_stream(res.stdout)}
    for v in ("v1.5.2", "v1.5.1"):
        entry = await tolerant.index.get("rsc.io/quote", v, "zip")
        assert entry is not None and entry.source == b.url and sums[v] == entry.h1
