"""What the go command does through a node is what it does against the upstream directly.

Each test runs the real go command twice with fresh module caches, once with GOPROXY at
a fake upstream and once at a node in front of it, and compares what go did (exit
status, go.mod, stderr with the proxy's address masked).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.goenv import GoResult, go_env, run_go
from tests.modules import module_files
from tests.upstream_fixture import FakeProxy, Fault

pytestmark = pytest.mark.e2e


def pkg(
    module: str, version: str, name: str, text: str, gomod: str | None = None, short: str | None = None
) -> tuple[bytes, bytes, bytes]:
    """(info, mod, zip) of a one-package module whose Hello() returns `text`."""
    mod = (gomod or f"module {module}\n\ngo 1.21\n").encode()
    info, _, zip_ = module_files(
        module,
        version,
        {
            "go.mod": mod,
            f"{name}.go": f'package {name}\n\nfunc Hello() string {{ return "{text}" }}\n'.encode(),
        },
    )
    if short is not None:
        info = json.dumps({"Version": version, "Time": "2024-01-02T03:04:05Z", "Short": short}).encode()
    return info, mod, zip_


def upstream_modules() -> dict[str, dict[str, tuple[bytes, bytes, bytes]]]:
    return {
        "example.com/old": {"v1.0.0": pkg("example.com/old", "v1.0.0", "old", "old")},
        # A fork used through `replace`: its go.mod keeps the original path.
        "example.com/fork/old": {
            "v1.2.3": pkg("example.com/fork/old", "v1.2.3", "old", "fork", gomod="module example.com/old\n\ngo 1.21\n")
        },
        # A renamed module: its go.mod names the new path.
        "example.com/renamed": {
            "v1.0.0": pkg(
                "example.com/renamed", "v1.0.0", "renamed", "renamed", gomod="module example.com/newname\n\ngo 1.21\n"
            )
        },
        "example.com/q": {
            "v1.0.0": pkg("example.com/q", "v1.0.0", "q", "one", short="1a2b3c4d5e6f"),
            "v1.1.0": pkg("example.com/q", "v1.1.0", "q", "one-one", short="9f8e7d6c5b4a"),
        },
    }


async def both(fake_proxy, make_node, tmp_path: Path, script, setup=None, **node_settings):  # type: ignore[no-untyped-def]
    """Run `script(env, workdir)` against the upstream directly and through a node; returns
    (direct, through, upstream, node). `setup(upstream)` may inject faults first."""
    up: FakeProxy = await fake_proxy(upstream_modules())
    up.queries["example.com/q"] = {"master": "v1.1.0", "release-1": "v1.0.0"}
    if setup is not None:
        setup(up)
    node = await make_node(up.url, **node_settings)
    out = []
    for name, url in (("direct", up.url), ("node", node.url)):
        work = tmp_path / name
        work.mkdir()
        env = go_env(work, url, GOFLAGS="-mod=mod -modcacherw")
        out.append(await script(env, work))
    return out[0], out[1], up, node


def masked(res: GoResult, *urls: str) -> tuple[int, str]:
    text = res.stderr
    for u in urls:
        text = text.replace(u, "PROXY")
    return res.returncode, re.sub(r"/tmp/\S+", "TMP", text)


def main_module(work: Path, body: str, imports: str = "") -> Path:
    src = work / "main"
    src.mkdir()
    (src / "go.mod").write_text("module example.com/main\n\ngo 1.21\n" + body)
    (src / "main.go").write_text(f"package main\n\nimport ({imports})\n\nfunc main() {{}}\n")
    return src


async def test_fork_through_replace_builds_as_directly(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def script(env: dict[str, str], work: Path) -> tuple[GoResult, GoResult]:
        src = main_module(
            work,
            "\nrequire example.com/old v1.0.0\n\nreplace example.com/old => example.com/fork/old v1.2.3\n",
            '_ "example.com/old"',
        )
        build = await run_go(["build", "./..."], env, cwd=src)
        listed = await run_go(["list", "-m", "all"], env, cwd=src)
        return build, listed

    (d_build, d_list), (n_build, n_list), _up, _node = await both(fake_proxy, make_node, tmp_path, script)
    assert d_build.ok, d_build.stderr
    assert n_build.ok, n_build.stderr
    assert "example.com/old v1.0.0 => example.com/fork/old v1.2.3" in n_list.stdout
    assert n_list.stdout == d_list.stdout


async def test_module_whose_mod_names_another_path_fails_as_directly(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def script(env: dict[str, str], work: Path) -> GoResult:
        src = main_module(work, "")
        return await run_go(["get", "example.com/renamed@v1.0.0"], env, cwd=src)

    direct, through, up, node = await both(fake_proxy, make_node, tmp_path, script)
    assert not direct.ok and "module declares its path as: example.com/newname" in direct.stderr
    assert masked(through, node.url) == masked(direct, up.url)  # go's own words, not the node's


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("master", "v1.1.0"),
        ("release-1", "v1.0.0"),
        ("1a2b3c4", "v1.0.0"),
        ("9f8e7d6c5b4a", "v1.1.0"),
        ("v1.1.0+meta", "v1.1.0"),
        ("v1.0", "v1.0.0"),
    ],
)
async def test_version_queries_resolve_as_directly(
    query: str, want: str, fake_proxy, make_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async def script(env: dict[str, str], work: Path) -> tuple[GoResult, str]:
        src = main_module(work, "")
        res = await run_go(["get", f"example.com/q@{query}"], env, cwd=src)
        return res, (src / "go.mod").read_text()

    (direct, d_mod), (through, n_mod), up, node = await both(fake_proxy, make_node, tmp_path, script)
    assert direct.ok, direct.stderr
    assert through.ok, through.stderr
    assert f"example.com/q {want}" in n_mod and n_mod == d_mod
    if not up.count(f"/example.com/q/@v/{query}.info"):
        return  # go resolved it from the list (v1.0 means the newest v1.0.x)
    # The answer is kept: asked again (a fresh client), the node answers from its cache.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/example.com/q/@v/{query}.info") as r:
            assert r.status == 200 and json.loads(await r.read())["Version"] == want
            assert r.headers["X-Modmesh-Cache"] == "hit"
    entry = await node.index.get("example.com/q", want, "info")
    assert entry is not None  # stored as the canonical version's .info too


async def test_upstream_404_and_410_text_reaches_go_as_directly(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def script(env: dict[str, str], work: Path) -> tuple[GoResult, GoResult]:
        src = main_module(work, "")
        gone = await run_go(["get", "example.com/q@v1.0.0"], env, cwd=src)
        missing = await run_go(["get", "example.com/nothere@v1.0.0"], env, cwd=src)
        return gone, missing

    def setup(up: FakeProxy) -> None:
        up.inject("example.com/q/@v/v1.0.0.info", Fault.status(410, b"gone: withdrawn by its author\nsee the notes\n"))

    (d_gone, d_missing), (n_gone, n_missing), up, node = await both(fake_proxy, make_node, tmp_path, script, setup)
    for d, n in ((d_gone, n_gone), (d_missing, n_missing)):
        assert not d.ok and "server response:" in d.stderr
        assert masked(n, node.url) == masked(d, up.url)
    assert "410 Gone\n\tserver response:\n\tgone: withdrawn by its author\n\tsee the notes" in n_gone.stderr
    assert "not found: unknown module example.com/nothere" in n_missing.stderr
    assert up.url.removeprefix("http://") not in n_gone.stderr + n_missing.stderr


async def test_list_of_held_versions_when_the_upstream_is_gone(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up: FakeProxy = await fake_proxy(upstream_modules())
    node = await make_node(up.url)
    env = go_env(tmp_path / "a", node.url)
    (await run_go(["mod", "download", "example.com/q@v1.0.0", "example.com/q@v1.1.0"], env, cwd=tmp_path)).check()
    assert up.count("/example.com/q/@v/list") == 0  # never asked for the list
    await up.stop()
    env = go_env(tmp_path / "b", node.url)
    res = (await run_go(["list", "-m", "-versions", "example.com/q"], env, cwd=tmp_path)).check()
    assert res.stdout.split() == ["example.com/q", "v1.0.0", "v1.1.0"]
    res = (await run_go(["list", "-m", "example.com/q@latest"], env, cwd=tmp_path)).check()
    assert res.stdout.split() == ["example.com/q", "v1.1.0"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/example.com/q/@v/list") as r:
            assert r.headers["X-Modmesh-Cache"] == "stale" and r.headers["X-Modmesh-Stale"] == "upstream-failed"
    assert await node.index.get_meta("example.com/q", "list") is None  # not cached as an upstream's answer


async def test_a_lagging_list_never_hides_a_version(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up: FakeProxy = await fake_proxy(upstream_modules())
    node = await make_node(up.url, meta_ttl=0.2, meta_stale_window=0)  # the default TTL is 5 minutes
    url = f"{node.url}/example.com/q/@v/list"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert (await r.read()).split() == [b"v1.0.0", b"v1.1.0"]
        # A mirror that lags (or an empty answer from a broken one) after the TTL:
        for lagging in (b"v1.0.0\n", b""):
            up.inject("example.com/q/@v/list", Fault.wrong_body(lagging), times=1)
            await asyncio.sleep(0.25)
            async with s.get(url) as r:
                assert r.headers["X-Modmesh-Cache"] == "revalidated"
                assert (await r.read()).split() == [b"v1.0.0", b"v1.1.0"]
    env = go_env(tmp_path, node.url)
    up.inject("example.com/q/@v/list", Fault.wrong_body(b"v1.0.0\n"))
    await asyncio.sleep(0.25)
    res = (await run_go(["list", "-m", "-versions", "example.com/q"], env, cwd=tmp_path)).check()
    assert res.stdout.split() == ["example.com/q", "v1.0.0", "v1.1.0"]


async def test_offline_node_answers_known_queries_only(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up: FakeProxy = await fake_proxy(upstream_modules())
    up.queries["example.com/q"] = {"master": "v1.1.0"}
    online = await make_node(up.url, data=tmp_path / "data")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{online.url}/example.com/q/@v/master.info") as r:
            assert r.status == 200
    await online.aclose()
    offline = await make_node(up.url, data=tmp_path / "data", offline=True)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{offline.url}/example.com/q/@v/master.info") as r:
            assert r.status == 200 and json.loads(await r.read())["Version"] == "v1.1.0"
        async with s.get(f"{offline.url}/example.com/q/@v/release-1.info") as r:
            assert r.status == 404 and "(offline)" in await r.text()
    assert up.count("release-1") == 0
