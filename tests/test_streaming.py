"""Streamed misses: a client gets every byte of the verified file or an aborted
connection, never a hang or a short body, whatever its pace; a client that stops
reading is cut off; a store that cannot take a file still passes it on.

Clients here read at a set pace (slower than the upstream) with aiohttp or a raw
socket, against real nodes and real fake upstreams on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from node.cache import store as store_module
from node.cache.inflight import Download
from node.config import Config
from node.golang import modzip
from node.tools.doctor.report import diagnose
from tests.blobs import Blob
from tests.disk import FillingDisk
from tests.goenv import decode_stream, go_env, run_go
from tests.modules import module_files, module_set
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.upstream_fixture import Fault

M = "example.com/big"
MB = 1 << 20
#: The node's shipped timeouts (the test fixture shortens them for failure tests).
_D = Config()
AT_DEFAULTS = {
    "connect_timeout": _D.connect_timeout,
    "read_timeout": _D.read_timeout,
    "small_timeout": _D.small_timeout,
    "breaker_reset": _D.breaker_reset,
    "stream_threshold": _D.stream_threshold,
    "write_idle_timeout": _D.write_idle_timeout,
}
#: Longest a transfer in these tests may take before it counts as a hang.
HANG = 60.0


def big_files(version: str, payload: bytes) -> tuple[bytes, bytes, bytes]:
    return module_files(M, version, {"go.mod": f"module {M}\n".encode(), "data.bin": payload})


async def paced_get(
    session: aiohttp.ClientSession, url: str, rate: float, pause_after: int | None = None, pause: float = 0.0
) -> bytes:
    """GET `url`, reading at `rate` bytes/s (optionally pausing once); the body or an error."""

    async def run() -> bytes:
        got = bytearray()
        async with session.get(url) as r:
            assert r.status == 200, (r.status, await r.text())
            start = time.monotonic()
            paused = 0.0
            async for chunk in r.content.iter_chunked(64 << 10):
                got += chunk
                if pause_after is not None and not paused and len(got) >= pause_after:
                    await asyncio.sleep(pause)
                    paused = pause
                ahead = start + paused + len(got) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return bytes(got)

    return await asyncio.wait_for(run(), HANG)


def h1_of(data: bytes, tmp: Path) -> str:
    path = tmp / f"z-{os.urandom(4).hex()}.zip"
    path.write_bytes(data)
    try:
        return modzip.h1_zip(path)
    finally:
        path.unlink()


async def test_slow_clients_get_every_byte_of_cold_large_zips_at_defaults(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    payload = os.urandom(8 * MB)
    versions = [f"v1.0.{i}" for i in range(20)]
    mods = module_set(*((M, v, big_files(v, payload)) for v in versions))
    up = await fake_proxy(mods)  # loopback: far faster than the client
    node = await make_node(up.url, **AT_DEFAULTS)
    async with aiohttp.ClientSession() as s:
        for v in versions:
            got = await paced_get(s, f"{node.url}/{M}/@v/{v}.zip", rate=16 * MB)
            assert got == mods[M][v][2], f"{v}: {len(got)} of {len(mods[M][v][2])} bytes"
    assert all(up.count(f"/{M}/@v/{v}.zip") == 1 for v in versions)


async def test_coalesced_followers_joining_at_any_moment_get_the_verified_zip(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    v = "v1.2.0"
    files = big_files(v, os.urandom(8 * MB))
    mods = module_set((M, v, files))
    db = FakeSumDB("sum.example.test", generate_keys("sum.example.test", seed=bytes(32)))
    db.add_corpus(mods)
    await db.start()
    try:
        up = await fake_proxy(mods)
        up.inject(f"{v}.zip", Fault.slow_body(8 * MB))  # about a second
        # The database answers late: the zip is all here before it verified.
        db.inject(f"/lookup/{M}@{v}", Fault.delay(2.5))
        node = await make_node(up.url, sumdb=(f"{db.vkey} {db.url}",), **AT_DEFAULTS)
        url = f"{node.url}/{M}/@v/{v}.zip"

        def flight() -> Download | None:  # the node's single flight for the zip
            return node.proxy._flights.get(f"{M}@{v}.zip")

        async def when(pred: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + HANG
            while not pred():
                assert time.monotonic() < deadline, f"never saw: {what}"
                await asyncio.sleep(0.005)

        async with aiohttp.ClientSession() as s:
            fast = asyncio.create_task(paced_get(s, url, rate=1e12))
            slow = asyncio.create_task(paced_get(s, url, rate=3 * MB))
            pauser = asyncio.create_task(paced_get(s, url, rate=32 * MB, pause_after=2 * MB, pause=4.0))
            await when(lambda: (dl := flight()) is not None and dl.written >= 4 * MB, "half the zip")
            mid = asyncio.create_task(paced_get(s, url, rate=3 * MB))
            await when(lambda: (dl := flight()) is not None and dl.written == len(files[2]), "the whole zip")
            dl = flight()
            assert dl is not None and not dl.finished, "the database answered too early for this test"
            late = asyncio.create_task(paced_get(s, url, rate=6 * MB))
            results = await asyncio.gather(fast, slow, pauser, mid, late)
        want = db_h1 = h1_of(files[2], tmp_path)
        assert db.record(M, v) is not None and want.encode() in db.record(M, v)
        for name, got in zip(("fast", "slow", "pauser", "mid", "late"), results):
            assert got == files[2], f"{name}: {len(got)} of {len(files[2])} bytes"
            assert h1_of(got, tmp_path) == db_h1
        assert up.count(f"{v}.zip") == 1
        entry = await node.index.get(M, v, "zip")
        assert entry is not None and entry.h1 == db_h1
    finally:
        await db.stop()


@pytest.mark.parametrize(
    "fault", [Fault.chunked_cut(8 * MB), Fault.chunked_short(8 * MB)], ids=["cut-mid-stream", "clean-short-end"]
)
async def test_upstream_without_length_truncated_never_ends_cleanly(  # type: ignore[no-untyped-def]
    fault: Fault, fake_proxy, make_node
) -> None:
    v = "v1.3.0"
    files = big_files(v, os.urandom(12 * MB))
    up = await fake_proxy(module_set((M, v, files)))
    up.inject(f"{v}.zip", fault, times=1)
    node = await make_node(up.url, **AT_DEFAULTS)
    url = f"{node.url}/{M}/@v/{v}.zip"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            await paced_get(s, url, rate=64 * MB)  # streams (past 4 MiB) before the cut
        assert await node.index.get(M, v, "zip") is None
        assert await paced_get(s, url, rate=64 * MB) == files[2]  # a good retry
    assert up.count(f"{v}.zip") == 2


async def stop_reading_after(url: str, first: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A client that sends a GET, reads the head and `first` body bytes, then reads no more.
    A small receive buffer keeps the kernel from taking the body for it."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 << 10)
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readexactly(first)
    return reader, writer, first


async def drain_until_closed(reader: asyncio.StreamReader) -> int:
    n = 0
    try:
        while chunk := await reader.read(1 << 20):
            n += len(chunk)
    except ConnectionError:
        pass
    return n


async def _stopped_reader_is_cut(fake_proxy, make_node, idle: float, **overrides) -> None:  # type: ignore[no-untyped-def]
    v = "v1.4.0"
    files = big_files(v, os.urandom(16 * MB))
    up = await fake_proxy(module_set((M, v, files)))
    up.inject(f"{v}.zip", Fault.slow_body(32 * MB))  # the stall starts while it downloads
    node = await make_node(up.url, **overrides)
    url = f"{node.url}/{M}/@v/{v}.zip"
    reader, writer, got = await stop_reading_after(url, 1 * MB)
    stopped = time.monotonic()
    try:
        # The download is not held: it finishes, is cached and served to others meanwhile.
        async with aiohttp.ClientSession() as s:
            assert await paced_get(s, url, rate=1e12) == files[2]
            entry = await node.index.get(M, v, "zip")
            assert entry is not None and entry.size == len(files[2])
            deadline = stopped + idle + 15
            while node.metrics.stalled_clients._value.get() == 0:
                assert time.monotonic() < deadline, "a client that stopped reading was never cut"
                await asyncio.sleep(0.1)
            cut_after = time.monotonic() - stopped
            assert cut_after >= idle - 0.5, f"cut after {cut_after:.1f}s, before the write-idle time"
            # What it had not read by then ends early: never the whole file.
            rest = await asyncio.wait_for(drain_until_closed(reader), HANG)
            assert got + rest < len(files[2])
            async with s.get(url) as r:
                assert r.status == 200 and r.headers["X-Modmesh-Cache"] == "hit" and await r.read() == files[2]
    finally:
        writer.close()
    assert up.count(f"{v}.zip") == 1


async def test_stopped_reader_is_cut_after_write_idle_time(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    await _stopped_reader_is_cut(fake_proxy, make_node, 1.0, write_idle_timeout=1.0)


async def test_stopped_reader_is_cut_after_60s_at_defaults(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    assert AT_DEFAULTS["write_idle_timeout"] == 60.0
    await _stopped_reader_is_cut(fake_proxy, make_node, 60.0, **AT_DEFAULTS)


async def test_file_larger_than_max_size_passes_through(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    small, big = big_files("v1.5.0", os.urandom(MB // 2)), big_files("v1.6.0", os.urandom(6 * MB))
    up = await fake_proxy(module_set((M, "v1.5.0", small), (M, "v1.6.0", big)))
    node = await make_node(up.url, max_size=4 * MB)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # each time whole; never stored, never evicting what fits
            assert await paced_get(s, f"{node.url}/{M}/@v/v1.6.0.zip", rate=1e12) == big[2]
        async with s.get(f"{node.url}/healthz") as r:
            h = await r.json()
        assert h["status"] == "degraded" and h["store"]["caching"] is False
        assert "larger than max_size" in h["store"]["reason"] and "max_size" in " ".join(h["reasons"])
        assert await paced_get(s, f"{node.url}/{M}/@v/v1.5.0.zip", rate=1e12) == small[2]
        async with s.get(f"{node.url}/healthz") as r:
            assert (await r.json())["status"] == "ok"  # it stored a file again
    assert await node.index.get(M, "v1.6.0", "zip") is None
    assert await node.index.get(M, "v1.5.0", "zip") is not None
    assert up.count("v1.6.0.zip") == 2
    assert node.metrics.passthrough_bytes._value.get() == 2 * len(big[2])
    assert not [p for p in node.store.tmp_root.rglob("*") if p.is_file()]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs the test fills; unmounted at teardown (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path, leave: int) -> Path:
    """Take the file system's free space, but `leave` bytes."""
    filler = fs / "filler"
    with open(filler, "ab") as f:
        while (free := _free(fs)) > leave:
            try:
                f.write(b"\0" * min(free - leave, 4 * MB))
                f.flush()
            except OSError:
                break
    return filler


def _free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


@pytest.mark.e2e
@pytest.mark.parametrize("leave", [0, 1 * MB], ids=["disk-full", "fills-mid-zip"])
async def test_full_disk_passes_modules_through_to_the_go_command(  # type: ignore[no-untyped-def]
    leave: int, small_fs: Path, fake_proxy, make_node, tmp_path: Path
) -> None:
    v = "v1.7.0"
    files = big_files(v, os.urandom(12 * MB))
    mods = module_set((M, v, files))
    db = FakeSumDB("sum.example.test", generate_keys("sum.example.test", seed=bytes(32)))
    db.add_corpus(mods)
    await db.start()
    try:
        up = await fake_proxy(mods)
        node = await make_node(up.url, data=small_fs / "data", sumdb=(f"{db.vkey} {db.url}",), **AT_DEFAULTS)
        filler = fill(small_fs, leave=leave)
        assert _free(small_fs) <= leave + 64 << 10 and _free(small_fs) < len(files[2]) // 8

        env = go_env(tmp_path / "go1", node.url, gosumdb=db.vkey)
        res = (await run_go(["mod", "download", "-json", f"{M}@{v}"], env, cwd=tmp_path)).check()
        out = decode_stream(res.stdout)[0]
        assert "Error" not in out and out["Sum"] == h1_of(files[2], tmp_path)  # go verified it
        assert Path(out["Zip"]).read_bytes() == files[2]

        assert await node.index.get(M, v, "zip") is None
        assert not [p for p in node.store.tmp_root.rglob("*") if p.is_file()], "temp files left on a full disk"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{node.url}/healthz") as r:
                h = await r.json()
        assert h["status"] == "degraded" and h["store"]["caching"] is False
        assert "disk full" in h["store"]["reason"] and any("cannot take files" in x for x in h["reasons"])
        assert node.metrics.passthrough_bytes._value.get() >= len(files[2])
        # doctor, on the client's side and the node's, names the cause.
        report = await diagnose(env, None, node=node.url, timeout=5)
        by = {c.code: c for c in report.checks if c.code}
        assert "disk full" in by["node-degraded"].detail and "cannot take files" in by["node-degraded"].detail
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{node.url}/_admin/doctor", params={"timeout": "2"}) as r:
                node_side = {c["code"]: c for c in (await r.json())["checks"] if c.get("code")}
        assert (
            "disk full" in node_side["store-refusing"]["detail"] and f"{M}@{v}" in node_side["store-refusing"]["detail"]
        )

        filler.unlink()  # space is back: the next request caches it
        env = go_env(tmp_path / "go2", node.url, gosumdb=db.vkey)
        res = (await run_go(["mod", "download", "-json", f"{M}@{v}"], env, cwd=tmp_path)).check()
        assert "Error" not in decode_stream(res.stdout)[0]
        entry = await node.index.get(M, v, "zip")
        assert entry is not None and entry.size == len(files[2])
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{node.url}/healthz") as r:
                assert (await r.json())["status"] == "ok"
    finally:
        await db.stop()


async def test_one_warning_per_file_passed_through_not_per_request(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    v = "v1.8.0"
    files = big_files(v, os.urandom(6 * MB))
    up = await fake_proxy(module_set((M, v, files)))
    up.inject(f"{v}.zip", Fault.slow_body(16 * MB))
    node = await make_node(up.url)
    disk = FillingDisk()
    disk.room = 2 * MB  # fills while the zip downloads
    monkeypatch.setattr(store_module, "os", disk)
    caplog.set_level(logging.WARNING, logger="node")
    async with aiohttp.ClientSession() as s:
        got = await asyncio.gather(*(paced_get(s, f"{node.url}/{M}/@v/{v}.zip", rate=(8 + i) * MB) for i in range(6)))
    assert all(g == files[2] for g in got)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert M in warnings[0] and v in warnings[0] and "disk full" in warnings[0]
    assert up.count(f"{v}.zip") == 1


async def test_export_stream_is_cut_when_a_blob_vanishes_mid_way(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """An export streams blobs from the store; one removed after the plan (eviction, a
    hand-cleaned disk) must cut the bundle, never end it cleanly short."""
    versions = ["v1.9.0", "v1.9.1", "v1.9.2"]
    mods = module_set(*((M, v, big_files(v, os.urandom(3 * MB))) for v in versions))
    up = await fake_proxy(mods)
    node = await make_node(up.url)
    async with aiohttp.ClientSession() as s:
        for v in versions:
            await paced_get(s, f"{node.url}/{M}/@v/{v}.zip", rate=1e12)
        received = 0
        length: int | None = None

        async def export() -> None:
            nonlocal received, length
            async with s.get(f"{node.url}/_admin/export") as r:
                assert r.status == 200
                length = r.content_length
                async for chunk in r.content.iter_chunked(64 << 10):
                    if received == 0:
                        for v in versions:  # gone before the node opens them
                            entry = await node.index.get(M, v, "zip")
                            assert entry is not None
                            Blob(node.config.data, entry.sha256).unlink(missing_ok=True)
                    received += len(chunk)
                    await asyncio.sleep(0.01)

        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(export(), HANG)
        assert length is not None and 0 < received < length
