"""`kill -9` of a real `modmesh serve` process during downloads, then a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import aiohttp

from tests.blobs import Blob, on_disk
from tests.modules import big_module, module_set
from tests.node_process import free_port, serve_process, temp_files
from tests.upstream_fixture import Fault

N = 20


async def test_kill_9_mid_download_then_restart(fake_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mods = [
        (f"example.com/crash{i}", "v1.0.0", big_module(f"example.com/crash{i}", "v1.0.0", 1 << 20)) for i in range(N)
    ]
    up = await fake_proxy(module_set(*mods))
    up.inject(r"\.zip$", Fault.slow_body(256 << 10))  # ~4 s per zip: all 20 are in flight
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async with aiohttp.ClientSession() as s:

        async def fetch(path: str) -> bytes:
            async with s.get(url + path) as r:
                return await r.read()

        async with serve_process(data, up.url, port) as proc:
            tasks = [asyncio.ensure_future(fetch(f"/{m}/@v/{v}.zip")) for m, v, _ in mods]
            for _ in range(200):  # until every download has a temp file with bytes in it
                parts = [p for p in temp_files(data) if p.stat().st_size > 0]
                if len(parts) >= N:
                    break
                await asyncio.sleep(0.05)
            assert len(parts) >= N, "downloads did not start"
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, Exception) for r in results)  # nothing completed
        assert temp_files(data)  # the crash left orphans behind...

        up.clear_faults()
        async with serve_process(data, up.url, port):
            assert temp_files(data) == []  # ...and start-up removed them
            for m, v, (info, mod, zip_) in mods:
                assert await fetch(f"/{m}/@v/{v}.zip") == zip_
                assert await fetch(f"/{m}/@v/{v}.mod") == mod
                assert await fetch(f"/{m}/@v/{v}.info") == info
            # Every blob on disk is whole: its name is the sha256 of its bytes.
            for name in on_disk(data):
                assert hashlib.sha256(Blob(data, name).read_bytes()).hexdigest() == name


async def test_sigterm_mid_download_leaves_no_partials(fake_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mods = [(f"example.com/term{i}", "v1.0.0", big_module(f"example.com/term{i}", "v1.0.0", 1 << 20)) for i in range(5)]
    up = await fake_proxy(module_set(*mods))
    up.inject(r"\.zip$", Fault.slow_body(64 << 10))  # ~16 s per zip: outlives the 5 s grace period
    data = tmp_path / "data"
    port = free_port()
    async with aiohttp.ClientSession() as s:

        async def fetch(path: str) -> bytes:
            async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                return await r.read()

        async with serve_process(data, up.url, port) as proc:
            tasks = [asyncio.ensure_future(fetch(f"/{m}/@v/{v}.zip")) for m, v, _ in mods]
            for _ in range(200):
                if len([p for p in temp_files(data) if p.stat().st_size > 0]) >= len(mods):
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await asyncio.gather(*tasks, return_exceptions=True)
    assert temp_files(data) == []  # removed on the way out, not at the next start
    assert on_disk(data) == {}
