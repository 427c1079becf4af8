"""The bytes of one in-flight download, readable by every client while they arrive.

Normally a spool is a temp file in the store, committed into place at the end.
When the store cannot take the bytes (the disk is full, a quota is reached, the
file is larger than `max_size` allows), the spool keeps them anyway and the
download goes on, uncached: **pass-through**. On a write error it copies what it
has into memory, removes the temp file at once, and carries on in memory.

Readers never open the temp path: they read through the spool (its own read
descriptor, or its memory), so a rename into the store, the removal of the temp
file or the move to memory never strands them. A spool lives until its last
holder releases it (the download, and every client streaming from it).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import IO

from node.cache.store import BlobStore, BlobWriter, StoredBlob
from node.errors import StorageFull

log = logging.getLogger(__name__)


class MemoryBudget:
    """Bytes of pass-through data the node may hold in memory at once, across downloads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


def storage_error_cause(e: BaseException) -> str | None:
    """Why the store could not take a file, if `e` says so: a full disk or quota."""
    if isinstance(e, StorageFull):
        return e.cause
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full (ENOSPC)" if e.errno == errno.ENOSPC else "disk quota exceeded (EDQUOT)"
    if isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return "disk full (the index could not grow)"
    return None


class Spool:
    """One download's bytes: in a temp file of the store, or in memory (pass-through)."""

    def __init__(
        self,
        store: BlobStore,
        budget: MemoryBudget,
        on_passthrough: Callable[[str], None] = lambda cause: None,
        packable: bool = True,
    ) -> None:
        self.store = store
        self.budget = budget
        self.on_passthrough = on_passthrough
        #: Why the store does not keep these bytes; None while it may.
        self.passthrough: str | None = None
        self.size = 0
        self._hash = hashlib.sha256()
        self._writer: BlobWriter | None = None
        self._rfd: int | None = None
        self._mem: bytearray | None = None
        self._held = 0  # bytes taken from the budget
        self._refs = 1
        try:
            self._writer = store.writer(packable)
            self._rfd = os.open(self._writer.tmp_path, os.O_RDONLY)
        except (OSError, StorageFull) as e:
            cause = storage_error_cause(e)
            if cause is None:
                self._close_writer()
                raise
            self._to_memory(cause, b"")

    # ---- writing (the download) ------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._writer is not None:
            try:
                self._writer.write(data)
            except StorageFull as e:
                self._to_memory(e.cause, data)
                return
            self.size += len(data)
            return
        if self._mem is None:
            raise StorageFull("pass-through: the file's bytes are no longer held")
        self._hold(len(data))
        self._mem += data
        self._hash.update(data)
        self.size += len(data)

    def reset(self) -> None:
        """Start over (the next source is tried)."""
        if self._writer is not None:
            self._writer.truncate()
        elif self._mem is not None:
            self.budget.give(self._held)
            self._held = 0
            self._mem = bytearray()
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._writer.sha256 if self._writer is not None else self._hash.hexdigest()

    @property
    def in_memory(self) -> bool:
        return self._mem is not None

    def open_for_check(self) -> IO[bytes]:
        """A binary file over every byte written, for zip checks in a thread. No
        writes may happen while it is open."""
        if self._mem is not None:
            return io.BufferedReader(_MemoryFile(self._mem))
        assert self._rfd is not None
        return os.fdopen(os.dup(self._rfd), "rb")

    def refuse(self, cause: str) -> None:
        """The store must not keep this file (it is larger than the store may grow): serve
        it from the temp file, which is removed at once (readers hold it open)."""
        self.passed_through(cause)
        self._close_writer()

    def passed_through(self, cause: str) -> None:
        """Record that these bytes reach clients without being cached, and why (once)."""
        if self.passthrough is None:
            self.passthrough = cause
            self.on_passthrough(cause)

    async def commit(self) -> StoredBlob | None:
        """Move the bytes into the store; None when they pass through instead."""
        if self._writer is None or self.passthrough is not None:
            self._close_writer()
            return None
        writer = self._writer
        try:
            blob = await asyncio.to_thread(writer.commit)
        except StorageFull as e:
            self._to_memory(e.cause, b"")
            return None
        self._hash = writer.hash_state()
        self._writer = None  # committed: the read descriptor now names the blob
        return blob

    # ---- reading (the clients) -------------------------------------------------

    def read(self, offset: int, n: int) -> bytes:
        if self._mem is not None:
            with memoryview(self._mem) as view:
                return bytes(view[offset : offset + n])
        if self._rfd is None:
            return b""
        return os.pread(self._rfd, n, offset)

    def acquire(self) -> None:
        assert self._refs > 0, "acquire after the last release"
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        if self._refs > 0:
            return
        self._close_writer()
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None
        self._mem = None
        self.budget.give(self._held)
        self._held = 0

    # ---- pass-through ---------------------------------------------------------

    def _hold(self, n: int) -> None:
        if not self.budget.take(n):
            raise StorageFull(
                "node storage is full and its pass-through memory is in use; try again shortly",
                cause=self.passthrough or "disk full",
            )
        self._held += n

    def _to_memory(self, cause: str, pending: bytes) -> None:
        """The store cannot take more: keep what was written (and `pending`) in memory."""
        self.passed_through(cause)
        have = self._read_file(self.size) if self.size else b""
        self._close_writer()
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None
        self._mem = bytearray()
        try:
            self._hold(len(have) + len(pending))
        except StorageFull:
            self._mem, self.size = None, 0
            raise
        self._mem += have
        self._mem += pending
        self._hash.update(pending)
        self.size += len(pending)

    def _read_file(self, size: int) -> bytes:
        if self._rfd is None:
            raise StorageFull("the file's bytes are no longer readable", cause="disk full")
        parts: list[bytes] = []
        offset = 0
        while offset < size:
            chunk = os.pread(self._rfd, min(1 << 20, size - offset), offset)
            if not chunk:
                raise StorageFull("the temp file lost bytes while the disk was full", cause="disk full")
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    def _close_writer(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            self._hash, self.size = w.hash_state(), w.size
            w.abort()  # removes the temp file; our read descriptor keeps it readable

    def __repr__(self) -> str:
        where = "memory" if self._mem is not None else "file"
        return f"<Spool {self.size} bytes in {where}, passthrough={self.passthrough!r}>"


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a bytearray, without copying it."""

    def __init__(self, data: bytearray) -> None:
        self._view: memoryview | None = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        assert self._view is not None
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        assert self._view is not None
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def fileno(self) -> int:
        raise OSError("in memory")

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        super().close()
