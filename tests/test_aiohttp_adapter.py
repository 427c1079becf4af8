"""What node/server/aiohttp_adapter.py relies on in aiohttp beyond its public API.

If an aiohttp release changes one of these, this file fails first, with the name of
the behaviour, instead of the fast path failing in subtle ways. pyproject.toml caps
aiohttp to the versions these tests passed with.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from node.metrics import Metrics
from node.server.accesslog import RequestRecorder, access_logger
from node.server.aiohttp_adapter import FastPathRunner, FastServer, ReturningHandler, response_started
from node.server.app import errors_middleware
from tests.modules import module_files, module_set

ROOT = Path(__file__).resolve().parent.parent
M, V = "example.com/adapter", "v1.0.0"


def test_the_installed_aiohttp_is_in_the_tested_range() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("aiohttp"))
    low, high = re.fullmatch(r"aiohttp>=([\d.]+),<([\d.]+)", spec).groups()  # type: ignore[union-attr]
    have = tuple(int(x) for x in aiohttp.__version__.split(".")[:2])
    assert tuple(map(int, low.split(".")[:2])) <= have < tuple(map(int, high.split(".")[:2])), aiohttp.__version__


def test_the_private_names_the_adapter_uses_exist() -> None:
    app = web.Application()
    assert callable(app._handle) and callable(app._make_request)
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    runner = web.AppRunner(app, handler_cancellation=True)
    assert isinstance(runner._kwargs, dict) and runner._kwargs.get("handler_cancellation") is True


async def test_setup_builds_the_fast_server_with_the_runners_settings(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(module_set((M, V, module_files(M, V))))
    node = await make_node(up.url)
    runner = node._runner
    assert isinstance(runner, FastPathRunner) and isinstance(runner.server, FastServer)
    assert runner.server.request_factory is not None  # aiohttp's request factory was handed on


async def test_aiohttp_takes_over_a_connection_with_bytes_already_read(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """web.Server() gives a protocol that accepts a transport mid-stream (connection_made,
    then data_received with what the fast path had read): pipelined requests after the
    hand-over are all answered, in order."""
    up = await fake_proxy(module_set((M, V, module_files(M, V))))
    node = await make_node(up.url)
    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/{M}/@v/{V}.info") as r:
        assert r.status == 200  # now in memory
    port = int(node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hit = f"GET /{M}/@v/{V}.info HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    miss = f"GET /{M}/@v/v9.9.9.info HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    last = f"GET /{M}/@v/{V}.info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    writer.write(hit + miss + last)  # one packet: the fast path reads all three at once
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"], data[:500]
    assert b"Server: Python" in data  # the second and third came from aiohttp's own protocol


async def test_response_started_tells_a_begun_answer_from_none(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    """request.writer.output_size: after the headers went out, an error can only cut
    the connection (errors_middleware), never append a second response."""
    seen: dict[str, bool] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["before"] = response_started(request)
        resp = web.StreamResponse()
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        seen["after"] = response_started(request)
        raise RuntimeError("the blob went away")

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/") as r:
            await r.read()
    assert seen == {"before": False, "after": True}


def test_the_recorder_is_what_the_access_log_class_is_built_with() -> None:
    recorder = RequestRecorder(Metrics(), logging.getLogger("test"))
    cls = access_logger(recorder)
    assert issubclass(cls, aiohttp.abc.AbstractAccessLogger) and cls.recorder is recorder


async def test_a_handler_lets_go_of_the_connection_after_its_answer(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """ReturningHandler: aiohttp's `log_access` runs once an answer's last byte is out
    (a streamed zip here), and `detach` (transport None, then connection_lost) ends
    aiohttp's request loop and forgets the handler without closing the transport: the
    next request on the connection is the fast path's."""
    up = await fake_proxy(module_set((M, V, module_files(M, V))))
    node = await make_node(up.url)
    server = node._runner.server
    assert isinstance(server, FastServer)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(node.url.rsplit(":", 1)[1]))
    for path in (f"/{M}/@v/{V}.zip", f"/{M}/@v/v9.9.9.info", f"/{M}/@v/{V}.zip"):  # miss, miss, hit
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        await asyncio.wait_for(reader.readexactly(length), 10)
        deadline = asyncio.get_running_loop().time() + 5
        while server.connections or not server.front.live:  # handed back just after the answer
            assert asyncio.get_running_loop().time() < deadline, "aiohttp kept the connection"
            await asyncio.sleep(0.01)
    writer.write(f"GET /{M}/@v/{V}.zip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    again = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert again.startswith(b"HTTP/1.1 200 OK") and b"Server:" not in again  # the fast path's answer
    frames = [getattr(t.get_coro(), "cr_frame", None) for t in asyncio.all_tasks()]
    assert not [f for f in frames if f is not None and isinstance(f.f_locals.get("self"), ReturningHandler)]
