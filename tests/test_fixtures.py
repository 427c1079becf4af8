"""Proof that the shared fixtures are faithful, with the real go command and no node.

If FakeProxy or the corpus zips were wrong, every node test built on them would
be testing against a fiction; here the go command itself is the judge.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from node.golang import dirhash, modzip, pseudo, semver, zipwriter
from tests.conftest import FakeProxyFactory, NameResolutionDenied, NetworkDenied
from tests.corpus import CorpusVersion, broken, parse_txtar, servable
from tests.goenv import go_env, remove_modcache, run_go
from tests.upstream_fixture import FakeProxy, Fault, ModuleSet

HELLO = "example.com/hello"
HELLO_MOD = b"module example.com/hello\n\ngo 1.21\n"
HELLO_INFO = b'{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}'
BLOB = bytes(range(256)) * 256  # 64 KiB, so "half a body" is well defined


def _hello_zip() -> bytes:
    out = io.BytesIO()
    zipwriter.create_zip_from_files(
        [("go.mod", HELLO_MOD), ("hello.go", b"package hello\n"), ("blob.bin", BLOB)],
        HELLO,
        "v1.0.0",
        out,
    )
    return out.getvalue()


def _hello_modules() -> ModuleSet:
    return {HELLO: {"v1.0.0": (HELLO_INFO, HELLO_MOD, _hello_zip())}}


def _json_stream(text: str) -> list[dict[str, Any]]:
    """`go mod download -json` prints concatenated objects, not an array."""
    dec = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


# --- corpus -------------------------------------------------------------------------


def test_txtar_rules() -> None:
    comment, files = parse_txtar(b"hi\n-- a --\nx\n--  b  --\ny\n-- --\n-- c --")
    assert comment == b"hi\n"
    assert files == [("a", b"x\n"), ("b", b"y\n-- --\n"), ("c", b"")]


def test_corpus_classification(corpus: list[CorpusVersion], corpus_modules: ModuleSet) -> None:
    ok = servable(corpus)
    bad = {cv.key: reason for cv, reason in broken(corpus)}
    assert len(ok) + len(bad) == len(corpus) > 250
    assert not {cv.key for cv in ok} & set(bad)
    assert "raw /NAME" in bad["rsc.io/badzip@v1.0.0"]
    assert "module.Check" in bad["rsc.io/quote@v2.0.0"]
    assert ".mod" in bad["example.com/retract/missingmod@v1.9.0"]
    assert "rsc.io/quote@v1.5.2" in {cv.key for cv in ok}
    # Paths that do not unescape are skipped, like Go's test proxy does.
    assert all(cv.path != "example.com/invalidpath/v1" for cv in corpus)


# --- (a) every servable version through the real go command ---------------------------


async def test_go_downloads_every_servable_version(
    corpus: list[CorpusVersion],
    corpus_modules: ModuleSet,
    fake_proxy: FakeProxyFactory,
    tmp_path: Path,
) -> None:
    ok = servable(corpus)
    fp = await fake_proxy(corpus_modules)
    env = go_env(tmp_path, fp.url)
    res = await run_go(["mod", "download", "-json", *(cv.key for cv in ok)], env, cwd=tmp_path)
    results = {(o["Path"], o["Version"]): o for o in _json_stream(res.stdout)}
    errors = {k: o["Error"] for k, o in results.items() if o.get("Error")}
    assert not errors, errors
    res.check()
    scratch = tmp_path / "served.zip"
    for cv in ok:
        got = results[(cv.path, cv.version)]
        _info, mod, zip_bytes = fp.modules[cv.path][cv.version]
        assert mod is not None and zip_bytes is not None
        scratch.write_bytes(zip_bytes)
        assert got["Sum"] == modzip.h1_zip(scratch), cv.key
        assert got["GoModSum"] == dirhash.h1_gomod(mod), cv.key
        assert Path(got["Zip"]).read_bytes() == zip_bytes, cv.key
    remove_modcache(tmp_path / "modcache")


async def test_go_rejects_deliberately_broken_zips(
    corpus_modules: ModuleSet, fake_proxy: FakeProxyFactory, tmp_path: Path
) -> None:
    """The raw zips are served byte for byte: go sees the breakage Go's own tests expect."""
    fp = await fake_proxy(corpus_modules)
    env = go_env(tmp_path, fp.url)
    want = {
        "rsc.io/badzip@v1.0.0": "unexpected file",
        "rsc.io/badfile3@v1.0.0": "x?y.go",
        "example.com/retract/missingmod@v1.9.0": "404",
    }
    res = await run_go(["mod", "download", "-json", *want], env, cwd=tmp_path)
    assert res.returncode != 0
    errors = {f"{o['Path']}@{o['Version']}": o.get("Error", "") for o in _json_stream(res.stdout)}
    for key, needle in want.items():
        assert needle in errors[key], (key, errors[key])


# --- (b) queries and a real build ----------------------------------------------------


async def test_go_list_versions_and_build(
    corpus: list[CorpusVersion],
    corpus_modules: ModuleSet,
    fake_proxy: FakeProxyFactory,
    go_build_cache: Path,
    tmp_path: Path,
) -> None:
    fp = await fake_proxy(corpus_modules)
    env = go_env(tmp_path, fp.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    res = (await run_go(["list", "-m", "-versions", "rsc.io/quote"], env, cwd=tmp_path)).check()
    tagged = sorted(
        (
            cv.version
            for cv in corpus
            if cv.path == "rsc.io/quote" and not pseudo.is_pseudo_version(cv.version) and cv.version != "v2.0.0"
        ),
        key=semver.sort_key,
    )
    assert len(tagged) == 10
    assert res.stdout.split() == ["rsc.io/quote", *tagged]
    # A commit-prefix query is resolved by the proxy, as Go's test proxy does.
    res = (await run_go(["list", "-m", "-json", "rsc.io/quote@c4d4236f"], env, cwd=tmp_path)).check()
    assert json.loads(res.stdout)["Version"] == "v1.5.2"

    main = tmp_path / "main"
    main.mkdir()
    (main / "go.mod").write_text("module example.com/main\n\ngo 1.21\n")
    (main / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n\n\t"rsc.io/quote"\n)\n\nfunc main() { fmt.Println(quote.Hello()) }\n'
    )
    (await run_go(["build", "-o", "hello", "."], env, cwd=main)).check()
    assert "rsc.io/quote v1.5.2" in (main / "go.mod").read_text()
    proc = await asyncio.create_subprocess_exec(
        str(main / "hello"), env={"PATH": os.defpath}, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.decode().strip() == "Hello, world."
    assert fp.count("rsc.io/quote/@v/v1.5.2.zip") == 1


# --- serving rules -----------------------------------------------------------------


async def test_protocol_answers(corpus_modules: ModuleSet, fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(corpus_modules)
    async with aiohttp.ClientSession() as s:

        async def get(path: str) -> tuple[int, bytes, str]:
            async with s.get(yarl.URL(fp.url + path, encoded=True)) as r:
                return r.status, await r.read(), r.headers.get("Content-Type", "")

        status, body, _ = await get("/rsc.io/quote/@v/list")
        assert status == 200
        listed = body.decode().split()
        assert "v1.5.2" in listed and "v2.0.0" not in listed  # fails module.Check
        assert not any(v.startswith("v0.0.0-") for v in listed)  # no pseudo-versions
        assert listed == sorted(listed, key=semver.sort_key)
        assert json.loads((await get("/rsc.io/quote/@latest"))[1])["Version"] == "v1.5.2"
        # Bang escaping arrives percent-encoded; counters use the decoded path.
        status, body, _ = await get("/rsc.io/%21q%21u%21o%21t%21e/@v/v1.5.3-%21p%21r%21e.info")
        assert status == 200 and json.loads(body)["Version"] == "v1.5.3-PRE"
        assert fp.requests["/rsc.io/!q!u!o!t!e/@v/v1.5.3-!p!r!e.info"] == 1
        status, body, _ = await get("/rsc.io/quote/@v/dd9747d19b04.info")
        assert json.loads(body)["Version"] == "v0.0.0-20180628003336-dd9747d19b04"
        for path in (
            "/nope.example/x/@v/list",
            "/rsc.io/quote/@v/v9.9.9.zip",
            "/rsc.io/quote/@latestx",
            "/rsc.io/QUOTE/@v/list",
            "/example.com/retract/missingmod/@v/v1.9.0.mod",
        ):
            status, body, ctype = await get(path)
            assert status == 404, path
            assert ctype.startswith("text/plain") and body.count(b"\n") == 2 and body.endswith(b"\n\n")
    assert len(fp.log) == sum(fp.requests.values())
    fp.reset_counts()
    assert not fp.requests and not fp.log


async def test_latest_and_add_module(fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy({})
    pseudos = ["v0.0.0-20200101000000-aaaaaaaaaaaa", "v0.0.0-20210101000000-bbbbbbbbbbbb"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{fp.url}/example.com/m/@latest") as r:
            assert r.status == 404
        for v in pseudos:
            fp.add_module("example.com/m", v, None, b"module example.com/m\n", None)
        async with s.get(f"{fp.url}/example.com/m/@v/list") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(f"{fp.url}/example.com/m/@latest") as r:
            assert (await r.json(content_type=None))["Version"] == pseudos[1]
        fp.add_module("example.com/m", "v1.1.0-rc.1", None, b"module example.com/m\n", None)
        async with s.get(f"{fp.url}/example.com/m/@latest") as r:
            assert (await r.json(content_type=None))["Version"] == "v1.1.0-rc.1"
        fp.add_module("example.com/m", "v1.0.0", None, b"module example.com/m\n", None)
        async with s.get(f"{fp.url}/example.com/m/@latest") as r:
            assert (await r.json(content_type=None))["Version"] == "v1.0.0"
        async with s.get(f"{fp.url}/example.com/m/@v/v1.0.0.zip") as r:
            assert r.status == 404  # a None member is a 404


# --- (c) faults ----------------------------------------------------------------------

ZIP_PATH = f"/{HELLO}/@v/v1.0.0.zip"


async def test_fault_status_empty_wrong(fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(_hello_modules())
    url = fp.url + ZIP_PATH
    async with aiohttp.ClientSession() as s:
        fp.inject(".zip", Fault.status(503, b"busy\n\nmore\n"), times=1)
        async with s.get(url) as r:
            assert r.status == 503 and await r.read() == b"busy\n\nmore\n"
            assert r.headers["Content-Type"].startswith("text/plain")
        async with s.get(url) as r:  # times=1 is used up
            assert r.status == 200 and await r.read() == fp.modules[HELLO]["v1.0.0"][2]
        fp.inject(r"hello/@v/v1\.0\.0\.(zip|mod)$", Fault.empty_200())
        for suffix in (".zip", ".mod"):
            async with s.get(fp.url + f"/{HELLO}/@v/v1.0.0{suffix}") as r:
                assert r.status == 200 and await r.read() == b""
        fp.clear_faults()
        fp.inject("v1.0.0.info", Fault.wrong_body(b"<html>oops</html>"))
        async with s.get(fp.url + f"/{HELLO}/@v/v1.0.0.info") as r:
            assert r.status == 200 and await r.read() == b"<html>oops</html>"
        fp.inject("/@v/list", Fault.status(410))
        async with s.get(fp.url + f"/{HELLO}/@v/list") as r:
            assert r.status == 410
    assert fp.count(".zip") == 3 and fp.count("v1.0.0.info") == 1


@pytest.mark.parametrize("kind", ["reset_mid_body", "truncate"])
async def test_fault_cut_body(kind: str, fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(_hello_modules())
    full = len(fp.modules[HELLO]["v1.0.0"][2] or b"")
    fp.inject(ZIP_PATH, getattr(Fault, kind)(), times=1)
    async with aiohttp.ClientSession() as s:
        async with s.get(fp.url + ZIP_PATH) as r:
            assert r.status == 200 and r.content_length == full
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                while chunk := await r.content.read(4096):
                    got += chunk
            assert len(got) <= full // 2
        async with s.get(fp.url + ZIP_PATH) as r:  # the next request is fine again
            assert len(await r.read()) == full


async def test_fault_reset_is_a_reset(fake_proxy: FakeProxyFactory) -> None:
    """reset_mid_body must look like ECONNRESET, truncate like a clean early EOF."""
    fp = await fake_proxy(_hello_modules())
    for kind, want_reset in (("reset_mid_body", True), ("truncate", False)):
        fp.inject(ZIP_PATH, getattr(Fault, kind)(), times=1)
        reader, writer = await asyncio.open_connection(fp.host, fp.port)
        writer.write(f"GET {ZIP_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = b""
        reset = False
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            reset = True
        writer.close()
        assert reset == want_reset, kind
        if not want_reset:
            head, _, body = data.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % len(fp.modules[HELLO]["v1.0.0"][2] or b"") in head
            assert 0 < len(body) < len(BLOB)


async def test_fault_hang_released_by_stop(fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(_hello_modules())
    fp.inject(ZIP_PATH, Fault.hang())
    async with aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(fp.url + ZIP_PATH, timeout=aiohttp.ClientTimeout(total=0.3)):
                pass

        async def hung() -> int:
            async with s.get(fp.url + ZIP_PATH) as r:
                return r.status

        task = asyncio.create_task(hung())
        while fp.count(ZIP_PATH) < 2:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await fp.stop()
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(task, 5)


async def test_fault_delay_and_slow_body(fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(_hello_modules())
    want = fp.modules[HELLO]["v1.0.0"][2]
    assert want is not None
    async with aiohttp.ClientSession() as s:
        fp.inject(ZIP_PATH, Fault.delay(0.3), times=1)
        t0 = time.monotonic()
        async with s.get(fp.url + ZIP_PATH) as r:
            assert await r.read() == want
        assert time.monotonic() - t0 >= 0.3
        rate = len(want) / 0.5  # the whole zip in ~0.5 s
        fp.inject(ZIP_PATH, Fault.slow_body(rate), times=1)
        t0 = time.monotonic()
        async with s.get(fp.url + ZIP_PATH) as r:
            assert r.content_length == len(want)
            assert await r.read() == want
        assert 0.4 <= time.monotonic() - t0 < 3


async def test_run_go_timeout_kills(fake_proxy: FakeProxyFactory, tmp_path: Path) -> None:
    """A hung upstream makes go wait forever (notes 2.4); run_go must kill it."""
    fp = await fake_proxy(_hello_modules())
    fp.inject(".info", Fault.hang())
    t0 = time.monotonic()
    res = await run_go(["mod", "download", f"{HELLO}@v1.0.0"], go_env(tmp_path, fp.url), cwd=tmp_path, timeout=1.5)
    assert res.timed_out and not res.ok
    assert time.monotonic() - t0 < 10


# --- (d) outage ------------------------------------------------------------------------


async def test_stop_start_same_port(fake_proxy: FakeProxyFactory) -> None:
    fp = await fake_proxy(_hello_modules())
    url, port = fp.url, fp.port
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/{HELLO}/@v/list") as r:
            assert r.status == 200 and await r.read() == b"v1.0.0\n"
        await fp.stop()
        assert not fp.running
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.get(f"{url}/{HELLO}/@v/list") as r:
                pass
        await fp.start()
        assert fp.port == port and fp.url == url
        async with s.get(f"{url}/{HELLO}/@v/list") as r:
            assert r.status == 200


async def test_run_context_manager() -> None:
    async with FakeProxy(_hello_modules()).run() as fp:
        async with aiohttp.ClientSession() as s, s.get(f"{fp.url}/{HELLO}/@v/v1.0.0.mod") as r:
            assert await r.read() == HELLO_MOD
    assert not fp.running


async def test_script_mode(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.upstream_fixture",
        "--listen",
        "127.0.0.1:0",
        cwd=str(Path(__file__).resolve().parent.parent),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert line.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s, s.get(f"{line}/x.example/@v/list") as r:
            assert r.status == 404
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the network guard -------------------------------------------------------------------


async def test_network_is_denied() -> None:
    with pytest.raises(NetworkDenied, match="not loopback"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(NameResolutionDenied):
        socket.getaddrinfo("proxy.golang.org", 443)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorError, match="denied"):
            await s.get("http://192.0.2.1/")
        with pytest.raises(aiohttp.ClientConnectorError, match="denied"):
            await s.get("https://proxy.golang.org/")
