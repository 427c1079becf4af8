"""The admissions journal: what the index holds, kept beside the blobs so that the
index can always be rebuilt without any network.

`<data>/index.journal` is append-only text, one record per line:

    <crc32 of the JSON, 8 hex digits> <JSON object>\\n

A record is durable when `append` returns (the bytes are written and fsynced;
concurrent appends share one write and one fsync). The index writes a record before
the row it describes, so everything the node ever acknowledged to a client is here.
Reading skips any line whose checksum or shape is wrong and goes on at the next
newline: a torn last line (a power cut mid-write) or a bad block costs the records
on it, never the rest. `rewrite` compacts the journal to a given state atomically.

Only immutable facts are journalled: versioned files (put, delete, confirmed by the
checksum database) and pins. Lists, `@latest`, queries and popularity are fetched
or counted again after a rebuild.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import zlib
from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from node.errors import StorageFull

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Put:
    """A versioned file was admitted (its blob is in the store)."""

    module: str
    version: str
    kind: str
    sha256: str
    size: int
    h1: str | None
    source: str
    fetched_at: float
    unverified: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    """A versioned file left the index (eviction, gc, quarantine)."""

    module: str
    version: str
    kind: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The checksum database confirmed a file kept unverified."""

    module: str
    version: str
    kind: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Pin:
    pattern: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Unpin:
    pattern: str


Record = Put | Delete | Confirmed | Pin | Unpin
_OPS: dict[str, type[Record]] = {"put": Put, "del": Delete, "ok": Confirmed, "pin": Pin, "unpin": Unpin}
_NAMES = {cls: op for op, cls in _OPS.items()}


def encode(record: Record) -> bytes:
    body = json.dumps({"op": _NAMES[type(record)], **asdict(record)}, separators=(",", ":"), ensure_ascii=True)
    raw = body.encode()
    return b"%08x %s\n" % (zlib.crc32(raw), raw)


def decode(line: bytes) -> Record | None:
    """The record on one line (without its newline), or None if the line is damaged."""
    crc, sep, raw = line.partition(b" ")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(raw):
            return None
        obj = json.loads(raw)
        cls = _OPS[obj.pop("op")]
        record = cls(**obj)
    except (ValueError, KeyError, TypeError):
        return None
    return record if _sound(record) else None


def _sound(r: Record) -> bool:
    """Field types as written (a line with a valid checksum was written by us, but the
    JSON of an older or newer node may differ: refuse rather than guess)."""
    strs = [getattr(r, f) for f in ("module", "version", "kind", "sha256", "source", "pattern") if hasattr(r, f)]
    if not all(isinstance(s, str) for s in strs):
        return False
    if isinstance(r, Put):
        return (
            isinstance(r.size, int)
            and isinstance(r.fetched_at, (int, float))
            and (r.h1 is None or isinstance(r.h1, str))
            and r.kind in ("info", "mod", "zip")
        )
    return True


@dataclass
class State:
    """What a journal says the index holds: the fold of its records."""

    #: (module, version, kind) -> the Put that admitted it (unverified as last confirmed).
    entries: dict[tuple[str, str, str], Put] = field(default_factory=dict)
    pins: dict[str, float] = field(default_factory=dict)

    def apply(self, r: Record) -> None:
        if isinstance(r, Put):
            # Versioned files are immutable: the first admission wins, as in the index.
            self.entries.setdefault((r.module, r.version, r.kind), r)
        elif isinstance(r, Delete):
            self.entries.pop((r.module, r.version, r.kind), None)
        elif isinstance(r, Confirmed):
            key = (r.module, r.version, r.kind)
            e = self.entries.get(key)
            if e is not None and e.sha256 == r.sha256 and e.unverified:
                self.entries[key] = Put(**{**asdict(e), "unverified": False})
        elif isinstance(r, Pin):
            self.pins.setdefault(r.pattern, r.created_at)
        else:
            self.pins.pop(r.pattern, None)

    def records(self) -> Iterator[Record]:
        yield from self.entries.values()
        yield from (Pin(p, t) for p, t in self.pins.items())


@dataclass
class ReadStats:
    records: int = 0
    damaged_lines: int = 0


def fold(records: Iterable[Record]) -> State:
    state = State()
    for r in records:
        state.apply(r)
    return state


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def size(self) -> int:
        return self._size

    def open(self) -> None:
        """Open for appending; a torn last line (no newline: a writer died mid-line) is
        cut off first, so the next record starts on a line of its own. Several
        processes may append (a node, `modmesh warm --data`): each write holds an
        exclusive flock on the file."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size:
                    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
                    if not tail.endswith(b"\n"):
                        cut = tail.rfind(b"\n")
                        keep = size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail))
                        log.warning("journal %s: dropping a torn last line (%d bytes)", self.path, size - keep)
                        os.ftruncate(fd, keep)
                        os.fsync(fd)
                        size = keep
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def aclose(self) -> None:
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        self.close()

    async def append(self, *records: Record) -> None:
        """Write `records` and fsync; returns once they are durable. Concurrent callers
        share one write and one fsync. StorageFull if the disk cannot take them."""
        assert self._fd is not None, "Journal.open() first"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((b"".join(encode(r) for r in records), fut))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(d for d, _ in batch)
                try:
                    await asyncio.to_thread(self._write, data)
                except BaseException as e:
                    err = _storage_error(e)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    if not isinstance(e, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = None

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(fd).st_size
            view = memoryview(data)
            try:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError:
                # Leave no partial record behind: the next append must start a fresh line.
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
            self._size = start + len(data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @property
    def end(self) -> int:
        """The journal's size on disk now (other processes may have appended)."""
        return os.fstat(self._fd).st_size if self._fd is not None else self._size

    def read(self, start: int = 0, stats: ReadStats | None = None) -> Iterator[Record]:
        """Every sound record from byte `start` on, in order; damaged lines are skipped
        (and counted in `stats`)."""
        stats = stats if stats is not None else ReadStats()
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    stats.damaged_lines += 1  # torn tail (open() cuts it when appending)
                    break
                r = decode(line[:-1])
                if r is None:
                    stats.damaged_lines += 1
                    continue
                stats.records += 1
                yield r

    def rewrite(self, records: Iterable[Record]) -> None:
        """Replace the journal by `records` (a compaction), atomically: a crash leaves
        either the old journal or the new one. `records` is consumed as it is written."""
        tmp = self._new_path()
        with open(tmp, "wb") as f:
            buf: list[bytes] = []
            for r in records:
                buf.append(encode(r))
                if len(buf) >= 4096:
                    f.write(b"".join(buf))
                    buf.clear()
            f.write(b"".join(buf))
            f.flush()
            os.fsync(f.fileno())
        self._install(tmp)

    async def rewrite_from(self, batches: AsyncIterable[Sequence[Record]]) -> int:
        """`rewrite` from batches that arrive asynchronously (the index read a page at a
        time), each written in a thread: memory holds one batch. Returns the records written."""
        tmp = self._new_path()
        f = await asyncio.to_thread(open, tmp, "wb")
        n = 0
        try:
            async for batch in batches:
                n += len(batch)
                await asyncio.to_thread(f.write, b"".join(encode(r) for r in batch))
            await asyncio.to_thread(_flush_and_sync, f)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        f.close()
        self._install(tmp)
        return n

    def _new_path(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    def _install(self, tmp: Path) -> None:
        was_open = self._fd is not None
        self.close()
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if was_open:
            self.open()
        else:
            self._size = self.path.stat().st_size


def _flush_and_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _storage_error(e: BaseException) -> BaseException:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "disk full (ENOSPC)" if e.errno == errno.ENOSPC else "disk quota exceeded (EDQUOT)"
        return StorageFull("node storage is full; the file was not cached", cause=cause)
    return e
