"""A real `modmesh serve` process for tests that kill it, and what they look at."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest


def temp_files(data: Path) -> list[Path]:
    return [p for p in (data / "tmp").rglob("*") if p.is_file()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_process(data: Path, upstream: str, port: int, *extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real `modmesh serve` on 127.0.0.1:`port`, ready when yielded; SIGTERM (then
    SIGKILL) on the way out unless the test ended it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data",
        str(data),
        "--upstream",
        upstream,
        "--sumdb",
        "off",
        "--log-format",
        "text",
        "--log-level",
        "warning",
        *extra,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    pytest.fail(f"modmesh serve exited {proc.returncode}: {err.decode()[-2000:]}")
                await asyncio.sleep(0.05)
            else:
                pytest.fail("modmesh serve did not become ready")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
