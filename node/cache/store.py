"""Content-addressed blob store on disk.

Layout under the data directory:

    blobs/pack.sqlite    blobs of at most 4 KiB that are not zips, a row each (pack.py)
    blobs/ab/abcdef...   one file per sha256, immutable once renamed into place
    tmp/<pid>-<id>/      in-progress writes of one store instance (process)

Callers do not care where a blob is: every method here reads both places (files
first: a blob written as a file before the pack existed stays one).

Several processes may use one data directory (a node, and `modmesh warm --data`
beside it), so each store writes into a temp directory of its own and start-up
removes only the directories of processes that are gone (their crash orphans).

A blob becomes visible only by `os.replace` of a fully written, fsynced temp file
in the same file system, or by one committed SQLite transaction (synchronous=FULL),
so a crash at any moment leaves either no blob or a whole one. The sha256 is
computed while the bytes are written, never after.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from node.cache.pack import PACK_MAX, Pack
from node.cache.status import StoreStatus
from node.errors import StorageFull

log = logging.getLogger(__name__)


class DataDirBusy(Exception):
    """Another process holds the data directory in a way this one cannot share."""


@dataclass(frozen=True, slots=True)
class BlobStat:
    """A blob found in the store: its name (sha256, unless it is debris), size, and when
    it was written."""

    sha256: str
    size: int
    written: float


@dataclass(frozen=True, slots=True)
class StoredBlob:
    sha256: str
    size: int
    path: Path | None  # None when the blob is packed


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_root = root / "tmp"
        self.tmp_dir = self.tmp_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.status = StoreStatus()
        self.pack = Pack(self.blob_dir / "pack.sqlite")
        self.pack_failing = False  # the last write to the pack failed (warned once)
        self._lock_fd: int | None = None

    def lock(self, exclusive: bool = False, wait: float = 10.0) -> None:
        """Hold `<data>/.lock` while this store is open: shared for nodes and commands,
        exclusive for a rebuild of the index. A shared lock waits up to `wait` seconds
        for a short exclusive holder (a journal compaction at another node's start);
        DataDirBusy if the lock cannot be had."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (0 if exclusive else wait)
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    what = "in use by a node or a modmesh command" if exclusive else "being rebuilt"
                    raise DataDirBusy(f"{self.root} is {what}") from None
                time.sleep(0.05)
        self._lock_fd = fd

    @contextlib.contextmanager
    def alone(self) -> Iterator[bool]:
        """True (holding the data directory exclusively meanwhile) when no other process
        uses it; False otherwise. For work that must not race another process's writes."""
        fd = self._lock_fd
        if fd is None:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)

    def open(self) -> int:
        """Create the directories and delete dead processes' temp files; returns how many."""
        if self._lock_fd is None:
            self.lock()
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        removed = 0
        for p in self.tmp_root.iterdir():
            if p.is_dir() and _owner_alive(p.name):
                continue  # another live process's in-flight writes
            removed += _remove_tree(p)
        if removed:
            log.info("removed %d orphan temp files from %s", removed, self.tmp_root)
        self.tmp_dir.mkdir()
        return removed

    def close(self) -> None:
        """Remove this instance's temp directory (its writers have all finished)."""
        _remove_tree(self.tmp_dir)
        self.pack.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path_for(self, sha256: str) -> Path:
        """Where the blob's file is, if it is a file (see `file_of`)."""
        return self.blob_dir / sha256[:2] / sha256

    def file_name(self, sha256: str) -> str:
        """path_for as a str, for code that names many blobs: pathlib interns each part
        of a Path, and the interpreter's table of interned strings only grows."""
        return os.path.join(self.blob_dir, sha256[:2], sha256)

    def file_of(self, sha256: str) -> Path | None:
        """The blob's file, or None when it is packed or missing (blocking: a stat)."""
        path = self.path_for(sha256)
        return path if os.path.isfile(path) else None

    def has(self, sha256: str) -> bool:
        return os.path.isfile(self.file_name(sha256)) or bool(self.pack.sizes([sha256]))

    def open_blob(self, sha256: str) -> BinaryIO:
        """The blob's bytes as a seekable binary file; FileNotFoundError if it is not here."""
        try:
            return open(self.path_for(sha256), "rb")
        except FileNotFoundError:
            data = self.pack.get(sha256)
            if data is None:
                raise
            return io.BytesIO(data)

    def probe(self, sha256: str, size: int, read: bool) -> tuple[bytes | None, bool]:
        """(the blob's bytes if `read`, else None; whether the blob is there). A blob
        the pack may hold is looked for there first (no failed open per hit)."""
        if not read:
            return None, self.file_of(sha256) is not None
        try:
            if size <= PACK_MAX:
                data = self.pack.get(sha256)
                if data is not None:
                    return data, True
            with open(self.path_for(sha256), "rb") as f:
                return f.read(), True
        except OSError:
            return None, False

    def read(self, sha256: str) -> bytes:
        """A small blob's bytes; FileNotFoundError if it is not here."""
        with self.open_blob(sha256) as f:
            return f.read()

    def take_out(self, sha256: str, dest: Path) -> bool:
        """Move the blob (as it is, damaged or not) to the file `dest`; False if it is not here."""
        try:
            os.replace(self.path_for(sha256), dest)
            return True
        except FileNotFoundError:
            pass
        data = self.pack.as_stored(sha256)
        if data is None:
            return False
        with open(dest, "wb") as f:
            f.write(data)
        self.pack.delete([sha256])
        return True

    def writer(self, packable: bool = True) -> BlobWriter:
        """A writer for one blob; `packable` False keeps it a file however small (zips)."""
        return BlobWriter(self, packable)

    def put_bytes(self, data: bytes) -> StoredBlob:
        """Store a small blob in one go (info, mod): same atomic path as streams."""
        w = self.writer()
        try:
            w.write(data)
            return w.commit()
        finally:
            w.abort()

    def remove(self, sha256: str) -> None:
        try:
            self.path_for(sha256).unlink()
        except FileNotFoundError:
            pass
        try:
            self.pack.delete([sha256])
        except sqlite3.DatabaseError as e:  # a damaged pack: its blobs read as unreadable anyway
            log.warning("cannot delete blob %s from %s: %s", sha256, self.pack.path, e)

    # ---- many blobs at once (gc, verify, eviction, rebuild: in a thread) ----------

    def sizes(self, shas: Iterable[str]) -> dict[str, int]:
        """The size of each of `shas` the store holds."""
        out: dict[str, int] = {}
        for sha in shas:
            try:
                out[sha] = os.stat(self.path_for(sha)).st_size
            except OSError:
                continue
        missing = [sha for sha in shas if sha not in out]
        if missing:
            out.update(self.pack.sizes(missing))
        return out

    def delete_unless_newer(self, shas: Iterable[str], since: float, renamed: bool = True) -> int:
        """Delete these blobs, except any written at or after `since` (or, with `renamed`,
        committed again since: a download of the same bytes may be about to index it;
        rename updates ctime; a packed blob's `written` is both). Returns the bytes freed."""
        freed = 0
        packed: list[str] = []
        for sha in shas:
            path = self.path_for(sha)
            try:
                st = path.stat()
                if (max(st.st_mtime, st.st_ctime) if renamed else st.st_mtime) >= since:
                    continue
                path.unlink()
            except FileNotFoundError:
                packed.append(sha)
                continue
            freed += st.st_size
        return freed + (self.pack.delete(packed, since) if packed else 0)

    def batches(self, size: int = 1000) -> Iterator[list[BlobStat]]:
        """Every blob in the store (whatever the index says), `size` at a time: the
        files, then the packed blobs."""
        if not self.blob_dir.is_dir():
            return
        yield from self._file_batches(size)
        for rows in self.pack.batches(size):
            yield [BlobStat(*row) for row in rows]

    def _file_batches(self, size: int) -> Iterator[list[BlobStat]]:
        batch: list[BlobStat] = []
        for sub in sorted(self.blob_dir.iterdir()):
            if not sub.is_dir():
                continue
            with os.scandir(sub) as it:
                for d in it:
                    try:
                        if not d.is_file():
                            continue
                        st = d.stat()
                    except FileNotFoundError:
                        continue
                    batch.append(BlobStat(d.name, st.st_size, st.st_mtime))
                    if len(batch) >= size:
                        yield batch
                        batch = []
        if batch:
            yield batch


class BlobWriter:
    """Writes one blob to a temp file, hashing as it goes.

    `commit()` fsyncs and renames into place, or packs a small blob (pack.py); call
    it in a thread: fsync can take a while. `abort()` is idempotent and safe after commit.
    """

    def __init__(self, store: BlobStore, packable: bool = True) -> None:
        self.store = store
        self.packable = packable
        self.tmp_path = store.tmp_dir / f"{secrets.token_hex(8)}.part"
        try:
            self._fd: int | None = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise _storage_error(e) from e
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "write after commit/abort"
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise _storage_error(e) from e
        self._hash.update(data)
        self.size += len(data)

    def truncate(self) -> None:
        """Start over (an upstream failed mid-body and the next one is tried)."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def hash_state(self) -> hashlib._Hash:
        """A copy of the running sha256 over every byte written so far."""
        return self._hash.copy()

    def commit(self) -> StoredBlob:
        assert self._fd is not None, "commit after commit/abort"
        digest = self.sha256
        final = self.store.path_for(digest)
        if self.packable and self.size <= PACK_MAX and not final.is_file():
            packed = self._pack(digest)
            if packed is not None:
                return packed
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            final.parent.mkdir(exist_ok=True)
            os.replace(self.tmp_path, final)
            _fsync_dir(final.parent)
        except OSError as e:
            raise _storage_error(e) from e
        return StoredBlob(digest, self.size, final)

    def _pack(self, digest: str) -> StoredBlob | None:
        assert self._fd is not None
        try:
            data = os.pread(self._fd, self.size + 1, 0) if self.size else b""
            if len(data) != self.size:
                raise OSError(errno.EIO, f"temp file of {digest} holds {len(data)} bytes, not {self.size}")
            self.store.pack.put(digest, data)
        except OSError as e:
            raise _storage_error(e) from e
        except sqlite3.DatabaseError as e:  # a damaged or locked pack: the blob is a file instead
            if not self.store.pack_failing:
                log.warning(
                    "blob pack %s cannot take blobs (%s): small blobs are files meanwhile", self.store.pack.path, e
                )
            self.store.pack_failing = True
            return None
        self.store.pack_failing = False
        self.abort()
        return StoredBlob(digest, self.size, None)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass


def _owner_alive(name: str) -> bool:
    pid, sep, _ = name.partition("-")
    if not sep or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: Path) -> int:
    """Delete a file or a directory tree; returns how many files went."""
    if not path.is_dir():
        try:
            path.unlink()
            return 1
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("cannot remove orphan temp file %s: %s", path, e)
            return 0
    count = sum(1 for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path, ignore_errors=True)
    return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(e: OSError) -> Exception:
    if e.errno == errno.ENOSPC:
        return StorageFull("node storage is full; the file was not cached", cause="disk full (ENOSPC)")
    if e.errno == errno.EDQUOT:
        return StorageFull(
            "node storage quota is exceeded; the file was not cached", cause="disk quota exceeded (EDQUOT)"
        )
    return e
