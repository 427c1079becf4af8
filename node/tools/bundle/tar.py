"""The tar stream a bundle travels in, written and read member by member.

Both directions stream (`w|`/`r|` semantics, never a whole zip in memory) and are
async, so the same code serves files, pipes and HTTP bodies. Only what a bundle
needs is read: regular files, PAX and GNU long-name headers.

The first member of a bundle is always its manifest (format.py); it is read
three ways: from a stream being imported (`read_manifest`), from an earlier
bundle's file (`read_manifest_file`) and from a stream passing by on its way to
a file (`ManifestSniffer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from node.tools.bundle.format import (
    MANIFEST_NAME,
    MAX_MANIFEST,
    MAX_MANIFEST_IN_MEMORY,
    BundleError,
    Manifest,
    ManifestEntry,
    feed,
    manifest_too_large,
)

#: A bundle's media type over HTTP.
CONTENT_TYPE = "application/x-tar"
CHUNK = 256 * 1024
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
#: Extended headers (PAX, GNU long names) one member may carry, in total: a stream of
#: stacked headers is refused once past this, not read into memory.
MAX_EXTENDED = 1 << 20


# ---- writing ---------------------------------------------------------------------


def tar_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(max(0.0, mtime))
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % BLOCK


def tar_size(members: list[tuple[str, int, float]]) -> int:
    """The exact size of the tar stream TarWriter writes for these (name, size, mtime)."""
    n = sum(len(tar_header(name, size, mtime)) + size + _padding(size) for name, size, mtime in members)
    n += 2 * BLOCK
    return n + -n % RECORD


Sink = Callable[[bytes], Awaitable[None]]


class TarWriter:
    """Writes a tar stream to an async sink, member by member, data streamed."""

    def __init__(self, sink: Sink, buffer: int = 1 << 20) -> None:
        self._sink = sink
        self._buffer = buffer
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.written = 0

    async def _write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        self.written += len(data)
        if self._pending_size >= self._buffer:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            await self._sink(data)

    async def add(self, name: str, size: int, mtime: float, chunks: AsyncIterable[bytes]) -> None:
        """One member; `chunks` must yield exactly `size` bytes (BundleError otherwise)."""
        await self._write(tar_header(name, size, mtime))
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                raise BundleError(f"{name}: more than the {size} bytes announced")
            await self._write(chunk)
        if sent != size:
            raise BundleError(f"{name}: {sent} bytes instead of the {size} announced")
        if pad := _padding(size):
            await self._write(bytes(pad))

    async def close(self) -> None:
        await self._write(bytes(2 * BLOCK))
        if pad := -self.written % RECORD:
            await self._write(bytes(pad))
        await self.flush()


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def file_chunks(path: Path, on_bytes: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """A file's bytes, CHUNK at a time (opened and read in a thread); `on_bytes` counts them."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk
    finally:
        f.close()


# ---- reading ---------------------------------------------------------------------


class ByteSource(Protocol):
    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end."""
        ...


@dataclass(frozen=True, slots=True)
class TarMember:
    name: str
    size: int
    type: bytes


class TarReader:
    """Reads a tar stream from an async source: `next()` then the member's `chunks()`.

    Only what a bundle needs is accepted: regular files, PAX and GNU long-name
    headers; directories are passed through (an unpacked and re-packed tree);
    anything else raises BundleError. Unread data is skipped by `next()`.
    """

    def __init__(self, src: ByteSource) -> None:
        self._src = src
        self._buf = bytearray()
        self._pos = 0  # consumed bytes at the front of _buf (dropped when more is read)
        self._left = 0  # unread data bytes of the current member
        self._pad = 0
        self.offset = 0  # bytes consumed from the source
        self._ended = False

    @property
    def _avail(self) -> int:
        return len(self._buf) - self._pos

    async def _fill(self, n: int) -> bool:
        while self._avail < n:
            more = await self._src.read(max(CHUNK, n - self._avail))
            if not more:
                return False
            del self._buf[: self._pos]
            self._pos = 0
            self._buf += more
        return True

    def _consume(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.offset += n
        return data

    async def _take(self, n: int) -> bytes:
        if not await self._fill(n):
            raise BundleError(f"bundle ends early, at byte {self.offset + self._avail} (truncated?)")
        return self._consume(n)

    async def _skip(self, n: int) -> None:
        while n > 0:
            step = min(n, CHUNK)
            await self._take(step)
            n -= step

    async def next(self) -> TarMember | None:
        """The next member's header, or None at the end of the archive."""
        await self._skip(self._left + self._pad)
        self._left = self._pad = 0
        if self._ended:
            return None
        pax: dict[str, str] = {}
        long_name: str | None = None
        extended = 0
        start = self.offset
        while True:
            if not await self._fill(BLOCK):
                if self._avail:
                    raise BundleError(f"bundle ends inside a header at byte {self.offset}")
                self._ended = True  # no end-of-archive blocks: tolerated, like tar
                return None
            block = await self._take(BLOCK)
            if block == bytes(BLOCK):
                self._ended = True
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise BundleError(f"corrupt tar header at byte {self.offset - BLOCK}: {e}") from None
            size = info.size
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
                extended += size
                if extended > MAX_EXTENDED:
                    raise BundleError(
                        f"the member at byte {start} has more than {MAX_EXTENDED >> 20} MiB of extended tar "
                        "headers; the bundle is refused"
                    )
                data = await self._take(size)
                await self._skip(_padding(size))
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(data))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            name = pax.get("path") or long_name or info.name
            if "size" in pax:
                if not pax["size"].isdigit():
                    raise BundleError(f"malformed size in the extended header of {name[:120]!r}")
                size = int(pax["size"])
            if info.type == tarfile.DIRTYPE:
                pax, long_name, extended, start = {}, None, 0, self.offset
                continue
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise BundleError(f"member {name[:120]!r} is not a regular file")
            self._left, self._pad = size, _padding(size)
            return TarMember(name, size, info.type)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current member's data (once)."""
        while self._left > 0:
            if not self._avail and not await self._fill(1):
                raise BundleError(f"bundle ends early, at byte {self.offset} (truncated?)")
            n = min(self._left, self._avail, CHUNK)
            self._left -= n
            yield self._consume(n)

    async def read_all(self, limit: int) -> bytes:
        if self._left > limit:
            raise BundleError(f"member larger than {limit} bytes")
        return b"".join([c async for c in self.chunks()])


def _parse_pax(data: bytes) -> dict[str, str]:
    """POSIX extended header records: `<len> <key>=<value>\\n`."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        sp = data.find(b" ", pos)
        if sp < 0 or not data[pos:sp].isdigit():
            raise BundleError("malformed extended tar header")
        end = pos + int(data[pos:sp])
        record = data[sp + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("malformed extended tar header")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


async def read_manifest(
    reader: TarReader, store: Callable[[list[ManifestEntry]], None] | None = None, room: int | None = None
) -> Manifest:
    """The first member of a bundle stream, which must be the manifest. With `store`, its
    entries go there a batch at a time as they are parsed (the Manifest's `entries`
    stay empty), and it may be up to MAX_MANIFEST bytes (or `room`, if less);
    without, up to MAX_MANIFEST_IN_MEMORY."""
    first = await reader.next()
    if first is None:
        raise BundleError("empty bundle")
    if first.name != MANIFEST_NAME:
        raise BundleError(f"not a modmesh bundle: the first member is {first.name[:120]!r}, not {MANIFEST_NAME}")
    limit = MAX_MANIFEST_IN_MEMORY if store is None else MAX_MANIFEST
    if first.size > limit:
        raise BundleError(manifest_too_large(first.size, limit))
    if store is not None and room is not None and first.size > room:
        raise BundleError(
            f"the bundle's manifest is {first.size >> 20} MiB, more than the {room >> 20} MiB free on the "
            "store's disk (an import keeps its entries there); the bundle is refused"
        )
    # Parsed as it arrives, in a thread: a node importing keeps answering meanwhile.
    batch: list[ManifestEntry] = []
    parser = Manifest.parser(None if store is None else batch.append)

    def step(chunk: bytes | None) -> Manifest | None:
        manifest = None
        if chunk is None:
            manifest = Manifest.parsed(parser)
        else:
            feed(parser, chunk)
        if store is not None and batch:
            store(batch[:])
            batch.clear()
        return manifest

    async for chunk in reader.chunks():
        await asyncio.to_thread(step, chunk)
    manifest = await asyncio.to_thread(step, None)
    assert manifest is not None
    return manifest


def read_manifest_file(path: Path) -> tuple[Manifest, dict[str, Any]]:
    """An earlier bundle's manifest: the bundle itself (only its first member is read)
    or the manifest JSON. Returns it parsed and as the JSON object."""
    with open(path, "rb") as f:
        head = f.read(1)
        f.seek(0)
        data = f.read() if head == b"{" else _manifest_sync(f)
    return Manifest.from_bytes(data), json.loads(data)


def _manifest_sync(f: BinaryIO) -> bytes:
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST_NAME:
                raise BundleError(f"{getattr(f, 'name', 'bundle')} is not a modmesh bundle")
            if member.size > MAX_MANIFEST_IN_MEMORY:
                raise BundleError(manifest_too_large(member.size, MAX_MANIFEST_IN_MEMORY))
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read()
    except tarfile.TarError as e:
        raise BundleError(f"{getattr(f, 'name', 'bundle')} is not a modmesh bundle: {e}") from None


class ManifestSniffer:
    """Picks the manifest (the first member) out of a bundle stream passing by; one
    over MAX_MANIFEST_IN_MEMORY is let by unread."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.manifest: Manifest | None = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self.buf += chunk
        if len(self.buf) < BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(bytes(self.buf[:BLOCK]), "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            self.done = True
            return
        if info.size > MAX_MANIFEST_IN_MEMORY:
            self.done, self.buf = True, bytearray()
            return
        if len(self.buf) >= BLOCK + info.size:
            self.done = True
            with contextlib.suppress(BundleError):
                self.manifest = Manifest.from_bytes(bytes(self.buf[BLOCK : BLOCK + info.size]))
            self.buf = bytearray()
