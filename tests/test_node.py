"""The node over HTTP against a real fake upstream: caching, faults, coalescing, streaming."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from node.golang import dirhash
from tests.blobs import Blob
from tests.modules import big_module, module_files, module_set
from tests.upstream_fixture import Fault

M = "example.com/hello"
V = "v1.0.0"
FILES = module_files(M, V)
MODS = module_set((M, V, FILES), (M, "v1.1.0", module_files(M, "v1.1.0")))
ZIP = f"/{M}/@v/{V}.zip"


@pytest.fixture
async def client():  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        yield s


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes, CIMultiDict[str]]:
    async with client.get(url) as r:
        return r.status, await r.read(), r.headers.copy()


async def test_miss_then_hit_with_headers(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url)
    for want_cache in ("miss", "hit"):
        status, body, h = await get(client, node.url + ZIP)
        assert status == 200 and body == FILES[2]
        assert h["X-Modmesh-Cache"] == want_cache
        assert h["Content-Type"] == "application/zip"
        assert h["Cache-Control"] == "public, max-age=31536000, immutable"
        assert int(h["Content-Length"]) == len(FILES[2])
        assert h["ETag"]
    assert h["X-Modmesh-H1"] == dirhash.h1_from_digests(
        (n, hashlib.sha256(d).hexdigest()) for n, d in _entries(FILES[2])
    )
    status, body, h = await get(client, node.url + f"/{M}/@v/{V}.mod")
    assert body == FILES[1] and h["Content-Type"].startswith("text/plain") and h["X-Modmesh-H1"]
    status, body, h = await get(client, node.url + f"/{M}/@v/{V}.info")
    assert body == FILES[0] and h["Content-Type"] == "application/json"
    assert up.count(ZIP) == 1  # the hit never went upstream
    # The index recorded what the issue asks for.
    e = await node.index.get(M, V, "zip")
    assert e is not None and e.size == len(FILES[2]) and e.sha256 == hashlib.sha256(FILES[2]).hexdigest()
    assert e.source == up.url and e.h1 == h_zip(FILES[2])


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def h_zip(data: bytes) -> str:
    return dirhash.h1_from_digests((n, hashlib.sha256(d).hexdigest()) for n, d in _entries(data))


async def test_list_and_latest_ttl_and_stale(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url, meta_ttl=0.5, meta_stale_window=0.0)
    status, body, h = await get(client, node.url + f"/{M}/@v/list")
    assert (status, body, h["X-Modmesh-Cache"]) == (200, b"v1.0.0\nv1.1.0\n", "miss")
    status, body, h = await get(client, node.url + f"/{M}/@v/list")
    assert h["X-Modmesh-Cache"] == "hit" and up.count("/@v/list") == 1
    status, body, h = await get(client, node.url + f"/{M}/@latest")
    assert status == 200 and b'"v1.1.0"' in body and h["X-Modmesh-Cache"] == "miss"

    await asyncio.sleep(0.6)
    up.add_module(M, "v1.2.0", *module_files(M, "v1.2.0"))
    _, body, h = await get(client, node.url + f"/{M}/@v/list")
    assert h["X-Modmesh-Cache"] == "revalidated" and body.endswith(b"v1.2.0\n")

    await asyncio.sleep(0.6)
    await up.stop()
    status, body, h = await get(client, node.url + f"/{M}/@v/list")
    assert status == 200 and body.endswith(b"v1.2.0\n")
    assert h["X-Modmesh-Cache"] == "stale" and h["X-Modmesh-Stale"] == "upstream-failed"
    status, body, h = await get(client, node.url + f"/{M}/@latest")
    assert status == 200 and h["X-Modmesh-Cache"] == "stale"


async def test_stale_while_revalidate(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url, meta_ttl=0.3, meta_stale_window=60)
    await get(client, node.url + f"/{M}/@v/list")
    await asyncio.sleep(0.4)
    up.add_module(M, "v1.2.0", *module_files(M, "v1.2.0"))
    _, body, h = await get(client, node.url + f"/{M}/@v/list")
    # Answered at once from the cache, refreshed behind the client's back...
    assert h["X-Modmesh-Cache"] == "stale" and h["X-Modmesh-Stale"] == "revalidating"
    assert not body.endswith(b"v1.2.0\n")
    for _ in range(50):
        await asyncio.sleep(0.05)
        _status, body, h = await get(client, node.url + f"/{M}/@v/list")
        if h["X-Modmesh-Cache"] == "hit":
            break
    # ...so the next client sees the new version as a fresh hit.
    assert h["X-Modmesh-Cache"] == "hit" and body.endswith(b"v1.2.0\n")
    assert up.count("/@v/list") == 2


async def test_negative_cache(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url, negative_ttl=0.5)
    for _ in range(3):
        status, body, _h = await get(client, node.url + "/example.com/nope/@v/list")
        assert status == 404 and body.count(b"\n\n") == 1 and b"\n" not in body.split(b"\n\n")[0]
    assert up.count("/example.com/nope/@v/list") == 1
    await asyncio.sleep(0.6)
    await get(client, node.url + "/example.com/nope/@v/list")
    assert up.count("/example.com/nope/@v/list") == 2


FAULTS = {
    "status-500": (Fault.status(500, b"upstream broke"), 502, "answered 500"),
    "reset": (Fault.reset_mid_body(), 502, ""),
    "truncate": (Fault.truncate(), 502, ""),
    "empty-200": (Fault.empty_200(), 502, "empty"),
    "wrong-content": (None, 502, "breaks the module zip rules"),
    "html-200": (Fault.wrong_body(b"<html>oops</html>"), 502, "breaks the module zip rules"),
    "hang": (Fault.hang(), 504, "did not answer"),
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_zip_faults_never_cached(name: str, fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    fault, want_status, want_text = FAULTS[name]
    up = await fake_proxy(MODS)
    if fault is None:  # a valid zip, but of another version: entries under the wrong prefix
        fault = Fault.wrong_body(module_files(M, "v1.1.0")[2])
    up.inject(ZIP, fault, times=1)
    node = await make_node(up.url, read_timeout=0.5, negative_ttl=0)
    status, body, h = await get(client, node.url + ZIP)
    assert status == want_status, body
    assert h["Content-Type"].startswith("text/plain")
    line = body.decode().split("\n\n")[0]
    assert "\n" not in line and want_text in line
    assert await node.index.get(M, V, "zip") is None
    assert not [p for p in (node.config.data / "tmp").rglob("*") if p.is_file()]
    # The fault cleared: the next request gets the right bytes.
    status, body, h = await get(client, node.url + ZIP)
    assert status == 200 and body == FILES[2] and h["X-Modmesh-Cache"] == "miss"


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        ("info", b'{"Version":"v9.9.9"}'),
        ("info", b"not json"),
        ("info", b""),
        ("mod", b"module a b c\n"),
        ("mod", b'module "unterminated\n'),
        ("mod", b""),
    ],
)
async def test_small_file_faults(kind: str, bad: bytes, fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    up.inject(f"/@v/{V}.{kind}", Fault.wrong_body(bad) if bad else Fault.empty_200(), times=1)
    node = await make_node(up.url, negative_ttl=0)
    status, body, _ = await get(client, node.url + f"/{M}/@v/{V}.{kind}")
    assert status == 502, body
    status, body, _ = await get(client, node.url + f"/{M}/@v/{V}.{kind}")
    assert status == 200 and body == FILES[0 if kind == "info" else 1]


async def test_list_refuses_html(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    up.inject("/@v/list", Fault.wrong_body(b"<!DOCTYPE html>\n<p>error</p>\n"), times=1)
    node = await make_node(up.url)
    status, body, _ = await get(client, node.url + f"/{M}/@v/list")
    assert status == 502 and b"non-version line" in body


async def test_pipe_falls_through_comma_stops(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    a, b = await fake_proxy(MODS), await fake_proxy(MODS)
    a.inject(ZIP, Fault.status(500))
    node = await make_node(f"{a.url}|{b.url}")
    status, body, _ = await get(client, node.url + ZIP)
    assert status == 200 and body == FILES[2]
    node2 = await make_node(f"{a.url},{b.url}")
    status, body, _h = await get(client, node2.url + ZIP)
    assert status == 502 and b.count(ZIP) == 1


async def test_coalescing_100_requests_one_fetch(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    up.inject(ZIP, Fault.delay(0.5))
    node = await make_node(up.url)
    results = await asyncio.gather(*(get(client, node.url + ZIP) for _ in range(100)))
    assert all(s == 200 and b == FILES[2] for s, b, _ in results)
    assert up.count(ZIP) == 1
    assert sum(1 for *_, h in results if h["X-Modmesh-Cache"] == "miss") >= 1


async def test_large_zip_streams_before_download_ends(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    info, mod, data = big_module(M, "v2.0.0+incompatible", 6 << 20)
    up = await fake_proxy(module_set((M, "v2.0.0+incompatible", (info, mod, data))))
    up.inject("v2.0.0+incompatible.zip", Fault.slow_body(8 << 20))  # ~0.75 s for the zip
    node = await make_node(up.url, stream_threshold=1 << 20)
    started = time.monotonic()
    async with client.get(node.url + f"/{M}/@v/v2.0.0+incompatible.zip") as r:
        assert r.status == 200 and r.headers["X-Modmesh-Cache"] == "miss"
        first = await r.content.readexactly(1 << 20)
        first_at = time.monotonic() - started
        rest = await r.read()
        done_at = time.monotonic() - started
    assert first + rest == data
    assert first_at < done_at  # bytes flowed before the upstream finished
    _status, body, h = await get(client, node.url + f"/{M}/@v/v2.0.0+incompatible.zip")
    assert h["X-Modmesh-Cache"] == "hit" and body == data


async def test_large_bad_zip_is_cut_before_the_end(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    _, _, other = big_module("example.com/other", V, 3 << 20)  # sound zip, wrong module
    info, mod, data = big_module(M, V, 3 << 20)
    up = await fake_proxy(module_set((M, V, (info, mod, data))))
    up.inject(ZIP, Fault.wrong_body(other), times=1)
    node = await make_node(up.url, stream_threshold=1 << 20, negative_ttl=0)
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(node.url + ZIP) as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(1 << 16):
                got += chunk
    assert len(got) < len(other)  # the client never had the whole (bad) zip
    assert await node.index.get(M, V, "zip") is None
    status, body, _h = await get(client, node.url + ZIP)
    assert status == 200 and body == data


async def test_healthz_readyz_metrics(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url)
    await get(client, node.url + ZIP)
    await get(client, node.url + ZIP)
    status, body, _ = await get(client, node.url + "/healthz")
    assert status == 200 and b'"status": "ok"' in body
    status, body, _ = await get(client, node.url + "/readyz")
    assert status == 200
    status, body, _h = await get(client, node.url + "/metrics")
    text = body.decode()
    assert 'modmesh_requests_total{cache="hit",kind="zip",status="200"} 1.0' in text
    assert 'modmesh_requests_total{cache="miss",kind="zip",status="200"} 1.0' in text
    assert "modmesh_upstream_latency_seconds_bucket" in text
    assert f'modmesh_served_bytes_total{{kind="zip"}} {float(2 * len(FILES[2]))}' in text


async def test_access_log_line(fake_proxy, make_node, client, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url)
    with caplog.at_level("INFO", logger="modmesh.access"):
        await get(client, node.url + ZIP)
        await asyncio.sleep(0.05)
    rec = [r for r in caplog.records if r.name == "modmesh.access"][-1]
    f = rec.fields  # type: ignore[attr-defined]
    assert f["path"] == ZIP and f["status"] == 200 and f["cache"] == "miss"
    assert f["upstream"] == up.url and f["bytes"] == len(FILES[2]) and f["ms"] > 0
    assert f["module"] == M and f["version"] == V


async def test_missing_blob_is_refetched(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    files = big_module(M, V, 200_000)  # above the in-memory size: served from disk
    up = await fake_proxy(module_set((M, V, files)))
    node = await make_node(up.url)
    await get(client, node.url + ZIP)
    e = await node.index.get(M, V, "zip")
    assert e is not None
    Blob(node.config.data, e.sha256).unlink()
    status, body, _ = await get(client, node.url + ZIP)
    assert status == 200 and body == files[2] and up.count(ZIP) == 2


async def test_admit_verifies_like_an_upstream(make_node) -> None:  # type: ignore[no-untyped-def]
    from node.cache.protocol import ModRequest
    from node.errors import IntegrityError

    node = await make_node("off")

    async def once(data: bytes):  # type: ignore[no-untyped-def]
        yield data

    req = ModRequest(M, V, "zip")
    entry, new = await node.proxy.admit(req, "bundle x", once(FILES[2]), len(FILES[2]))
    assert new and entry.h1 == h_zip(FILES[2]) and entry.source == "bundle x"
    _, again = await node.proxy.admit(req, "bundle x", once(FILES[2]))
    assert not again  # importing twice changes nothing
    bad = ModRequest(M, "v1.1.0", "zip")
    with pytest.raises(IntegrityError, match="breaks the module zip rules"):
        await node.proxy.admit(bad, "bundle x", once(FILES[2]))  # entries under v1.0.0/
    assert await node.index.get(M, "v1.1.0", "zip") is None
    with pytest.raises(IntegrityError, match="does not parse"):
        await node.proxy.admit(ModRequest(M, V, "mod"), "bundle x", once(b"module a b c\n"))
    # A .mod that names another module (a fork, a renamed module) is the go command's business.
    entry, new = await node.proxy.admit(ModRequest(M, V, "mod"), "bundle x", once(b"module example.com/other\n"))
    assert new and entry.size == len(b"module example.com/other\n")


async def test_no_answer_names_an_upstream(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    """Every fault the tests above provoke, and then some: the answers (status line,
    headers, body) never contain the upstream's address, even when its own 404 text does."""
    up = await fake_proxy(MODS)
    where = up.url.removeprefix("http://")
    faults = [
        Fault.status(500, f"disk on fire at {up.url}/x\n".encode()),
        Fault.status(503),
        Fault.reset_mid_body(),
        Fault.truncate(),
        Fault.empty_200(),
        Fault.wrong_body(b"<html>x</html>"),
        Fault.hang(),
        Fault.status(404, f"not found: {up.url}/{M}\n".encode()),
        Fault.status(410, f"gone from {where}\n".encode()),
        Fault.chunked_cut(),
    ]
    node = await make_node(f"{up.url}|{up.url}/second", read_timeout=0.5, negative_ttl=0, breaker_threshold=100)
    answers: list[tuple[int, bytes, str]] = []

    async def ask(path: str) -> None:
        async with client.get(node.url + path) as r:
            try:
                body = await r.read()
            except aiohttp.ClientPayloadError:
                body = b""
            answers.append((r.status, body, repr(dict(r.headers))))

    for fault in faults:
        for path in (
            ZIP,
            f"/{M}/@v/{V}.info",
            f"/{M}/@v/{V}.mod",
            f"/{M}/@v/list",
            f"/{M}/@latest",
            f"/{M}/@v/master.info",
        ):
            up.clear_faults()
            up.inject(path.replace(f"/{M}", ""), fault)
            await ask(path)
    await up.stop()  # connection refused, then the breaker
    for _ in range(5):
        await ask(f"/{M}/@v/v1.1.0.zip")
        await ask(f"/{M}/@v/v9.0.0.info")
        await ask("/example.com/elsewhere/@v/list")
    assert len(answers) > 70 and {s for s, *_ in answers} >= {404, 410, 502, 504}
    leaks = [a for a in answers if where.encode() in a[1] or where in a[2] or "127.0.0.1" in a[2]]
    assert not leaks, leaks[:3]
