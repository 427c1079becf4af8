"""The fast path: in-memory hits answered below aiohttp, everything else handed over."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import aiohttp
import pytest

from node.cache import hot
from node.cache.memory import LRU, entry_size
from node.cache.protocol import ModRequest
from node.server import responses
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


# ---- issue 18: line endings, head size and time, coming back after a miss -------------


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response off a keep-alive connection: (status, headers, body; none for HEAD)."""
    raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:] if ln)}
    body = b"" if head else await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(lines[0].split(" ")[1]), headers, body


def fast(headers: dict[str, str]) -> bool:
    """Answered by the fast path: aiohttp always sends its Server header, the fast path never."""
    return "server" not in headers


@pytest.mark.parametrize(
    "payload",
    [
        f"GET {INFO} HTTP/1.1\nHost: x\n\n".encode(),
        f"GET {INFO} HTTP/1.1\r\nHost: x\n\n".encode(),
        f"GET {INFO} HTTP/1.1\r\nHost: x\r\n\n".encode(),
        f"GET {INFO} HTTP/1.1\nHost: x\n".encode(),  # not even a whole head yet
        f"GET {INFO} HTTP/1.1\r\nHost: x\rX: y\r\n".encode(),  # a bare CR
    ],
)
async def test_bare_line_endings_are_answered_at_once(warm, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    """aiohttp refuses a bare LF (or CR) in a request head with 400; the fast path hands
    such a head over at once instead of waiting for a CRLF CRLF that never comes."""
    _, port = warm
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await asyncio.wait_for(reader.read(), 5)  # a hang check, not a speed test
    writer.close()
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ")[1] == b"400", answer[:300]


async def test_heads_over_aiohttps_limits_get_aiohttps_answer_at_once(warm) -> None:  # type: ignore[no-untyped-def]
    _, port = warm
    long_line = f"GET {INFO}?{'x' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    out = await asyncio.wait_for(raw(port, long_line, until_close=True), 10)
    assert out.split(b" ")[1] == b"400", out[:200]  # aiohttp's line limit (8190)
    many = "".join(f"X-Pad-{i}: {'p' * 100}\r\n" for i in range(90))  # 9 KiB of short fields: aiohttp takes it
    out = await asyncio.wait_for(raw(port, get(INFO, many + "Connection: close\r\n"), until_close=True), 10)
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Server: Python" in out, out[:200]


async def trickle(port: int, payload: bytes, every: float, prefix: bytes = b"") -> tuple[float, bytes]:
    """Send `prefix`, then `payload` one byte every `every` seconds until the node closes
    the connection: (seconds from the first trickled byte to the close, what came back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    if prefix:
        writer.write(prefix)
        status, _, _ = await read_response(reader)
        got = b"HTTP/1.1 %d\r\n" % status
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed = asyncio.ensure_future(reader.read())
    try:
        for i in range(len(payload)):
            if closed.done() or loop.time() - started > 15:
                break
            try:
                writer.write(payload[i : i + 1])
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([closed], timeout=every)
        got += await asyncio.wait_for(closed, 10)
    finally:
        writer.close()
    return loop.time() - started, got


async def test_a_trickled_head_is_cut_after_head_timeout(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """One byte every 0.2 s keeps coming, yet the head's deadline (1 s here) runs from its
    first byte: 408 and closed, not before (the upper bound only says it ends; per byte
    it never would). The same on a connection that came back from aiohttp,
    and for a head so large that aiohttp was already reading it."""
    up = await fake_proxy(module_set((M, V, FILES)))
    node = await make_node(up.url, head_timeout=1.0)
    port = int(node.url.rsplit(":", 1)[1])
    slow = get(INFO) * 20  # far longer than 1 s at 5 bytes a second
    took, got = await trickle(port, slow, 0.2)
    assert 0.9 < took < 10 and got.startswith(b"HTTP/1.1 408 Request Timeout"), (took, got[:200])
    # After a miss that aiohttp answered (the connection is back on the fast path).
    took, got = await trickle(port, slow, 0.2, prefix=get("/example.com/nope/@v/list"))
    assert got.startswith(b"HTTP/1.1 404\r\nHTTP/1.1 408 Request Timeout"), got[:300]
    assert 0.9 < took < 10, took
    # Over MAX_HEAD: aiohttp reads the head, the deadline still holds.
    big = f"GET {INFO} HTTP/1.1\r\n".encode() + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 100) for i in range(90))
    took, got = await _trickle_after(port, big)
    assert 0.9 < took < 10 and got.startswith(b"HTTP/1.1 408"), (took, got[:200])
    metric = node.metrics.registry.get_sample_value("modmesh_head_timeouts_total")
    assert metric == 3


async def _trickle_after(port: int, burst: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(burst)
    closed = asyncio.ensure_future(reader.read())
    try:
        for _ in range(40):
            if closed.done():
                break
            try:
                writer.write(b"p")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([closed], timeout=0.2)
        got = await asyncio.wait_for(closed, 10)
    finally:
        writer.close()
    return loop.time() - started, got


async def test_a_connection_comes_back_to_the_fast_path_after_aiohttp_answered(warm) -> None:  # type: ignore[no-untyped-def]
    """Keep-alive traffic alternating hits with requests aiohttp answers (a miss, HEAD,
    /healthz, a body) keeps getting its hits from the fast path."""
    _node, port = warm
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    others = [
        get("/example.com/nope/@v/list"),
        f"HEAD {INFO} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        get("/healthz"),
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        get(f"/example.com/%21hello/@v/{V}.zip"),  # not in memory (only .info, .mod, list were asked)
    ]
    answers = []
    for other in others:
        for payload in (get(INFO), other):
            writer.write(payload)
            answers.append(await read_response(reader, head=payload.startswith(b"HEAD")))
    writer.close()
    hits = answers[0::2]
    assert all(s == 200 and fast(h) and b == FILES[0] for s, h, b in hits), [(s, h) for s, h, _ in hits]
    assert [s for s, _, _ in answers[1::2]] == [404, 200, 200, 405, 200]
    assert not any(fast(h) for _, h, _ in answers[1::2])


async def test_pipelined_requests_after_a_miss_keep_their_order(warm) -> None:  # type: ignore[no-untyped-def]
    _, port = warm
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    mod = f"/example.com/%21hello/@v/{V}.mod"
    writer.write(get(INFO) + get("/example.com/nope/@v/list") + get(mod) + get(INFO) + get("/healthz") + get(mod))
    answers = [await read_response(reader) for _ in range(6)]
    writer.close()
    assert [s for s, _, _ in answers] == [200, 404, 200, 200, 200, 200]
    assert [fast(h) for _, h, _ in answers] == [True, False, True, True, False, True]
    assert answers[2][2] == answers[5][2] == FILES[1]


async def test_a_body_aiohttp_answers_early_stays_with_aiohttp(warm) -> None:  # type: ignore[no-untyped-def]
    """aiohttp answers before the whole body arrived: it reads the rest itself, and the
    bytes after it are the next request, not a body's tail taken for a head."""
    _, port = warm
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    status, headers, _ = await read_response(reader)
    assert status == 405 and not fast(headers)
    writer.write(b"world" + get(INFO))
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 200 and body == FILES[0] and not fast(headers)


async def test_over_tls_hits_come_back_to_the_fast_path(fake_proxy, make_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With tls_cert_file and open access, the fast path sits under TLS: the same keep-alive
    connection gets hits from it around a Range request, a HEAD and a miss that aiohttp
    answers; a bare-LF head is refused at once."""
    import ssl

    from tests.test_access import self_signed

    cert, key = self_signed(tmp_path)
    up = await fake_proxy(module_set((M, V, FILES)))
    node = await make_node(up.url, tls_cert_file=cert, tls_key_file=key)
    port = int(node.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(cert))
    zip_path = f"/example.com/%21hello/@v/{V}.zip"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    sent = [
        get(INFO),  # a miss the first time
        get(INFO),
        get(zip_path, "Range: bytes=0-9\r\n"),
        get(zip_path, "Range: bytes=0-9\r\n"),
        get(INFO),
        f"HEAD {INFO} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        get(f"/example.com/%21hello/@v/{V}.mod"),
        get("/example.com/nope/@v/list"),
        get(INFO),
    ]
    answers = []
    for payload in sent:
        writer.write(payload)
        answers.append(await read_response(reader, head=payload.startswith(b"HEAD")))
    writer.close()
    assert [s for s, _, _ in answers] == [200, 200, 200, 200, 200, 200, 200, 404, 200]
    assert [fast(h) for _, h, _ in answers] == [False, True, False, True, True, False, False, False, True]
    assert answers[1][2] == answers[8][2] == FILES[0]
    assert answers[2][2] == answers[3][2]  # an in-memory blob ignores Range through either path
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(f"GET {INFO} HTTP/1.1\nHost: x\n\n".encode())
    refused = await asyncio.wait_for(reader.read(), 5)  # a hang check, not a speed test
    writer.close()
    assert refused.split(b" ")[1] == b"400", refused[:200]


async def _drop_from_memory(node, kinds: tuple[str, ...] = ("info", "mod")) -> None:  # type: ignore[no-untyped-def]
    """As after a restart: the store holds the files, memory does not."""
    for kind in kinds:
        assert await node.index.get(M, V, kind) is not None
        node.proxy.forget(ModRequest(M, V, kind))


async def test_a_hit_memory_does_not_hold_is_read_off_the_loop_and_answered_here(warm) -> None:  # type: ignore[no-untyped-def]
    """A cached .info/.mod not in memory is looked up and read in a thread and answered
    by the fast path (not handed to aiohttp), counted as a hit, on one connection whose
    pipelined requests keep their order around it."""
    node, port = warm
    await _drop_from_memory(node)
    hits = node.metrics.requests.labels("info", "200", "hit")
    before = hits._value.get()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    mod = f"/example.com/%21hello/@v/{V}.mod"
    writer.write(get(INFO) + get("/example.com/nope/@v/list") + get(mod) + get("/healthz") + get(INFO))
    answers = [await read_response(reader) for _ in range(5)]
    writer.close()
    assert [s for s, _, _ in answers] == [200, 404, 200, 200, 200]
    assert [fast(h) for _, h, _ in answers] == [True, False, True, False, True]
    assert answers[0][2] == answers[4][2] == FILES[0] and answers[2][2] == FILES[1]
    assert answers[0][1]["x-modmesh-cache"] == "hit"
    assert hits._value.get() == before + 2


async def test_a_client_gone_while_its_hit_is_read_is_no_error(warm, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    node, port = warm
    for _ in range(5):
        await _drop_from_memory(node)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get(INFO) + get(INFO))
        writer.close()  # before the answers
    await _drop_from_memory(node)
    # Half-closed after the request: the answer still comes, then the connection closes.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get(INFO))
    writer.write_eof()
    status, headers, body = await read_response(reader)
    assert status == 200 and fast(headers) and body == FILES[0]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_hit_memory_holds_is_answered_without_a_parse(warm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A hit memory holds is its hot answer, found by the path: no request parse (whose
    cache of parsed paths stops hitting once the store holds more files than it does), no
    index row; counted as a hit like any other."""
    node, port = warm
    parsed: list[str] = []
    real = responses.parse_request

    def counting(path: str) -> ModRequest:
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(responses, "parse_request", counting)
    node.proxy.hits.entries = LRU(node.proxy.hits.entries.max_bytes, entry_size)  # no rows in memory
    hits = node.metrics.requests.labels("mod", "200", "hit")
    before = hits._value.get(), node.index._access.get((M, V, "mod"), (0, 0.0))[0]
    mod = f"/example.com/%21hello/@v/{V}.mod"
    answers = await raw(port, get(INFO) + get(mod))
    assert answers.count(b"HTTP/1.1 200 OK") == 2 and FILES[1] in answers
    assert parsed == []
    assert (hits._value.get(), node.index._access[(M, V, "mod")][0]) == (before[0] + 1, before[1] + 1)


async def test_a_peer_is_not_given_a_hot_answer_the_checksum_database_has_not_confirmed(warm) -> None:  # type: ignore[no-untyped-def]
    node, _port = warm
    req = ModRequest(M, V, "info")
    entry = await node.index.get(M, V, "info")
    record = hot.pack(dataclasses.replace(entry, unverified=True), FILES[0])
    assert record is not None
    node.proxy.hits.hot.put(req.path, record)
    assert node.proxy.hot_hit(req.path, from_peer=True) is None
    got = node.proxy.hot_hit(req.path, from_peer=False)
    assert got is not None and got[0] == req and hot.body(got[1]) == FILES[0]


async def test_a_small_file_the_fast_path_reads_from_the_store_is_held_as_its_hot_answer_alone(warm) -> None:  # type: ignore[no-untyped-def]
    """Read from the store for the fast path, a small file becomes its hot answer, with no
    row kept in memory beside it (the hot answer is all the next hit needs)."""
    node, port = warm
    await _drop_from_memory(node, ("info",))
    req = ModRequest(M, V, "info")
    assert node.proxy.hits.hot.get(req.path) is None
    first = await raw(port, get(INFO))
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(FILES[0])
    record = node.proxy.hits.hot.get(req.path)
    assert record is not None and hot.body(record) == FILES[0]
    assert node.proxy.hits.entries.get(req.key) is None
