"""A data directory holding n cached versions (a `.info` and a `.mod` each), for bench/scale.py.

Filled the way `modmesh import` fills a store: a Node on the directory (no listener,
no upstream, no checksum database) admits every file through `ModuleProxy.admit`,
which vets it, hashes it, writes the blob, its index row and its journal line: the
store is the node's own. Every `.info` and every `.mod` is distinct (its own blob).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from node.cache.protocol import Kind, ModRequest
from node.config import Config
from node.service import Node

#: Versions per module: many modules with a handful of versions each.
PER_MODULE = 20
_BATCH = 256
_EPOCH = 1_700_000_000


@dataclass(frozen=True)
class Filled:
    versions: int
    files: int
    cached_bytes: int  # the sum of the cached files' sizes
    seconds: float


def version_of(i: int) -> tuple[str, str]:
    """(module, version) of the i-th cached version."""
    return f"example.com/scale/m{i // PER_MODULE}", f"v1.{i % PER_MODULE}.0"


def path_of(i: int, kind: str) -> str:
    module, version = version_of(i)
    return f"/{module}/@v/{version}.{kind}"


def body_of(i: int, kind: str) -> bytes:
    module, version = version_of(i)
    if kind == "info":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_EPOCH + i * 60))
        return f'{{"Version":"{version}","Time":"{stamp}"}}'.encode()
    # A go.mod of typical size (a few hundred bytes): a require block of six modules.
    deps = "".join(f"\texample.com/scale/dependency{(i + d) % 50} v0.{(i + d) % 97}.{i}\n" for d in range(6))
    return f"module {module}\n\ngo 1.21\n\nrequire (\n{deps})\n".encode()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _fill(data: Path, n: int) -> int:
    cfg = Config(listen="127.0.0.1:0", data=data, upstream="off", sumdb=())
    node = Node(cfg)
    await node.start()
    total = 0
    try:

        async def admit(i: int) -> int:
            size = 0
            for kind in ("info", "mod"):
                module, version = version_of(i)
                body = body_of(i, kind)
                entry, new = await node.proxy.admit(ModRequest(module, version, _kind(kind)), "bench", _once(body))
                if not new or entry.size != len(body):
                    raise RuntimeError(f"{module}@{version}.{kind} was not admitted as a new file")
                size += len(body)
            return size

        for start in range(0, n, _BATCH):
            total += sum(await asyncio.gather(*(admit(i) for i in range(start, min(n, start + _BATCH)))))
    finally:
        await node.aclose()
    return total


def _kind(kind: str) -> Kind:
    if kind == "info":
        return "info"
    return "mod"


def fill(data: Path, n: int) -> Filled:
    """Admit n versions (2n files) into a new data directory."""
    if data.exists():
        raise FileExistsError(f"{data} exists: the store is built from empty")
    t0 = time.perf_counter()
    cached = asyncio.run(_fill(data, n))
    return Filled(n, 2 * n, cached, time.perf_counter() - t0)


def _walk(root: Path) -> Iterator[os.stat_result]:
    yield os.lstat(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield os.lstat(os.path.join(dirpath, name))


def disk_bytes(root: Path) -> int:
    """Bytes the directory takes on disk, as du counts them: st_blocks x 512, every entry."""
    return sum(st.st_blocks * 512 for st in _walk(root))
