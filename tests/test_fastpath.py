"""The fast path: in-memory hits answered below aiohttp, everything else handed over."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.modules import module_files, module_set

M, V = "example.com/Hello", "v1.0.0"  # upper case: the path arrives as !hello, percent-encoded
FILES = module_files(M, V)
INFO = f"/example.com/%21hello/@v/{V}.info"


async def raw(port: int, payload: bytes, until_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5 if not until_close else 5)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n{extra}\r\n".encode()


@pytest.fixture
async def warm(fake_proxy, make_node):  # type: ignore[no-untyped-def]
    up = await fake_proxy(module_set((M, V, FILES)))
    node = await make_node(up.url)
    async with aiohttp.ClientSession() as s:
        for suffix in (f"@v/{V}.info", f"@v/{V}.mod", "@v/list"):
            async with s.get(f"{node.url}/example.com/%21hello/{suffix}") as r:
                assert r.status == 200
                await r.read()
    return node, int(node.url.rsplit(":", 1)[1])


async def test_pipelined_hits_match_aiohttp(warm, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    node, port = warm
    caplog.set_level("INFO", logger="modmesh.access")
    out = await raw(port, get(INFO) + get(f"/example.com/%21hello/@v/{V}.mod") + get("/example.com/%21hello/@v/list"))
    responses = out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(responses) == 3
    head, body = responses[0].split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
    assert body.startswith(FILES[0])
    assert headers["Content-Length"] == str(len(FILES[0]))
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Modmesh-Cache"] == "hit" and headers["Cache-Control"].endswith("immutable")
    assert headers["ETag"] and headers["Date"].endswith("GMT") and headers["Repr-Digest"].startswith("sha-256=:")
    # The same answer through aiohttp (a client connection that already did a miss).
    async with aiohttp.ClientSession() as s, s.get(node.url + INFO) as r:
        assert await r.read() == FILES[0]
        for k in ("Content-Type", "ETag", "Repr-Digest", "Cache-Control", "X-Modmesh-Cache"):
            assert r.headers[k] == headers[k], k
    fast = [r for r in caplog.records if getattr(r, "fields", {}).get("path") == INFO.replace("%21", "!")]
    assert fast and fast[0].fields["cache"] == "hit"  # type: ignore[attr-defined]


async def test_miss_after_hit_hands_over_on_the_same_connection(warm) -> None:  # type: ignore[no-untyped-def]
    _node, port = warm
    out = await raw(
        port, get(INFO) + get("/example.com/nope/@v/list") + get(INFO, "Connection: close\r\n"), until_close=True
    )
    assert out.count(b"HTTP/1.1 200 OK") == 2 and b"HTTP/1.1 404 Not Found" in out
    assert out.index(b"404 Not Found") < out.rindex(b"200 OK")  # answered in order


@pytest.mark.parametrize(
    "payload",
    [
        f"HEAD {INFO} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {INFO} HTTP/1.0\r\nHost: x\r\n\r\n".encode(),
        f"GET {INFO}?x=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {INFO} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode(),
    ],
)
async def test_anything_unusual_goes_to_aiohttp(warm, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    _, port = warm
    out = await raw(port, payload)
    assert out.startswith(b"HTTP/1.") and b"Server: Python" in out  # aiohttp's Server header


async def test_garbage_is_aiohttps_400(warm) -> None:  # type: ignore[no-untyped-def]
    _, port = warm
    out = await raw(port, b"\x00\x01garbage\r\n\r\n", until_close=True)
    assert out.split(b"\r\n")[0].split(b" ")[1] == b"400"


async def test_idle_keepalive_connections_are_closed(warm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from node.server import fastpath

    monkeypatch.setattr(fastpath, "KEEPALIVE", 0.2)
    _, port = warm
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get(INFO))
    first = await asyncio.wait_for(reader.read(65536), 2)
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert await asyncio.wait_for(reader.read(65536), 2) == b""  # closed by the server when idle
    writer.close()


async def test_a_client_that_pipelines_but_never_reads_is_bounded_then_cut(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """Answers must not pile up in memory for a client that sends requests and reads
    nothing: the node stops reading its requests, then cuts it after write_idle_timeout."""
    import socket

    files = module_files(M, V, {"go.mod": f"module {M}\n".encode(), "data.bin": os.urandom(40000)})
    up = await fake_proxy(module_set((M, V, files)))
    node = await make_node(up.url, write_idle_timeout=3.0)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # a miss, then a hit: now it is in memory
            async with s.get(f"{node.url}/example.com/%21hello/@v/{V}.zip") as r:
                assert r.status == 200 and 30000 < len(await r.read()) <= 64 << 10
    port = int(node.url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _reader, writer = await asyncio.open_connection(sock=sock, limit=16 << 10)
    one = get(f"/example.com/%21hello/@v/{V}.zip", f"X-Pad: {'p' * 2000}\r\n")
    sent, cut = 0, False
    try:
        for _ in range(4000):  # 80 MB of requests, 1.6 GB of answers if they were all written
            writer.write(one * 10)
            await asyncio.wait_for(writer.drain(), 0.5)
            sent += 10
    except (TimeoutError, ConnectionError):
        cut = True  # the node stopped reading: our requests back up (or it cut us)
    fast = list(node._runner.server._fast)  # type: ignore[union-attr]
    assert fast, "the connection left the fast path"
    buffered = max((c._transport.get_write_buffer_size() for c in fast if c._transport), default=0)
    assert buffered < 4 << 20, f"{buffered} bytes of answers held for a client that reads nothing"
    assert cut and sent < 4000 * 10
    # Nothing was read for the write-idle time: the node drops the connection.
    deadline = asyncio.get_running_loop().time() + 10
    while any(c._transport is not None and not c._transport.is_closing() for c in node._runner.server._fast):  # type: ignore[union-attr]
        assert asyncio.get_running_loop().time() < deadline, "a client that reads nothing was never cut"
        await asyncio.sleep(0.1)
    writer.close()
