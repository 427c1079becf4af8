"""Small blobs packed in one SQLite database, `<data>/blobs/pack.sqlite`.

A file costs at least one disk block (4 KiB) however small it is, and `.info` and
`.mod` files are mostly 50-500 bytes: kept a file each, the store took 20-60 times
the bytes it caches. So a blob of at most `PACK_MAX` bytes that is not a zip (zips
stay files: sendfile and the zip readers need a path) is a row here instead:

    blobs(sha256 BLOB PRIMARY KEY, written INTEGER, data BLOB, size INTEGER) WITHOUT ROWID

keyed by the 32 raw bytes of its sha256; `written` is when it was last committed, in
milliseconds (rounded up: gc's grace and eviction's "written since" only ever keep more;
whole seconds would keep a blob eviction just unreferenced when both fall in one second).
`data` is the blob deflated (raw deflate, RFC 1951) when that is shorter, and `size`
then its length; `size` is NULL when `data` is the blob as it is (`encode`/`decode`).
A go.mod's require block deflates to about half; a short `.info` does not, and stays
as it is. A pack from before `size` existed gains the column when opened (its rows
read as they are); earlier versions cannot read a pack with deflated rows.
The database is in WAL mode with synchronous=FULL: a commit returns only once
the row is on disk, as the fsync of a blob file did, so an acknowledged blob survives
a power cut. Several processes may use one data directory (a node and `modmesh warm
--data`): SQLite's locking serializes their writes (busy timeout 10 s).

Blocking: every method runs in a worker thread, never on the event loop. One
connection reads and another writes, each behind its own lock, so reads go on while
a commit waits for the disk.
"""

from __future__ import annotations

import errno
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

#: The largest blob packed; a larger one (and any zip) is a file of its own.
PACK_MAX = 4096
#: 16 KiB pages: rows inserted in random (sha256) order leave pages partly empty, and
#: larger pages waste less (with rows as they are, before deflating: with 4 KiB pages
#: the pack took 1.51x the bytes of a mix of .info and .mod files, with 16 KiB 1.42x).
PAGE_SIZE = 16384
#: The write-ahead log is folded into the pack every this many pages (4 MiB), and
#: cut back to that size: what a running store takes beyond its rows.
WAL_PAGES = 256
_PAGE = 500  # keys per query
_WBITS = 12  # a 4 KiB window covers a whole packed blob (PACK_MAX)
_SIZE = "coalesce(size, length(data))"


def encode(blob: bytes) -> tuple[bytes, int | None]:
    """(data, size) of the row for `blob`: deflated when that is shorter."""
    deflated = zlib.compress(blob, -1, -_WBITS)
    return (deflated, len(blob)) if len(deflated) < len(blob) else (blob, None)


def decode(data: bytes, size: int | None) -> bytes:
    """The blob a row holds; ValueError if its deflated bytes are damaged."""
    if size is None:
        return data
    inflate = zlib.decompressobj(-15)
    try:
        blob = inflate.decompress(data, size + 1)
    except zlib.error as e:
        raise ValueError(f"deflated blob damaged: {e}") from e
    if len(blob) != size or not inflate.eof:
        raise ValueError(f"deflated blob damaged: it inflates to other than {size} bytes")
    return blob


class Pack:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the table exists; ignored after
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * PAGE_SIZE}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS blobs (sha256 BLOB PRIMARY KEY, written INTEGER NOT NULL,"
                " data BLOB NOT NULL, size INTEGER) WITHOUT ROWID"
            )
            if not any(col[1] == "size" for col in db.execute("PRAGMA table_info(blobs)")):
                try:
                    db.execute("ALTER TABLE blobs ADD COLUMN size INTEGER")
                except sqlite3.OperationalError as e:  # another connection added it meanwhile
                    if "duplicate column" not in str(e):
                        raise
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = self._connect()
        return self._reader

    def _write(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def close(self) -> None:
        for lock, name in ((self._read_lock, "_reader"), (self._write_lock, "_writer")):
            with lock:
                db = getattr(self, name)
                if db is not None:
                    db.close()
                    setattr(self, name, None)

    # ---- one blob --------------------------------------------------------------

    def put(self, sha256: str, data: bytes) -> None:
        """Store (or commit again) a blob; on disk when this returns. OSError(ENOSPC)
        when the disk is full."""
        stored, size = encode(data)
        try:
            with self._write_lock:
                self._write().execute(
                    "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)",
                    (bytes.fromhex(sha256), math.ceil(time.time() * 1000), stored, size),
                )
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
                raise OSError(errno.ENOSPC, "disk full (the blob pack could not grow)") from e
            raise

    def get(self, sha256: str) -> bytes | None:
        """The blob's bytes, None if it is not packed; OSError(EIO) if the pack cannot be
        read (damaged, or locked past the busy timeout) or the row's deflated bytes are
        damaged: the blob is unreadable."""
        row = self._row(sha256)
        if row is None:
            return None
        try:
            return decode(*row)
        except ValueError as e:
            raise OSError(errno.EIO, f"blob {sha256} in {self.path} unreadable: {e}") from e

    def as_stored(self, sha256: str) -> bytes | None:
        """What the pack holds for the blob, damaged or not: its bytes, or the row's
        deflated bytes as they are when those do not inflate (for quarantine)."""
        row = self._row(sha256)
        if row is None:
            return None
        try:
            return decode(*row)
        except ValueError:
            return row[0]

    def _row(self, sha256: str) -> tuple[bytes, int | None] | None:
        try:
            with self._read_lock:
                row = (
                    self._read()
                    .execute("SELECT data, size FROM blobs WHERE sha256 = ?", (bytes.fromhex(sha256),))
                    .fetchone()
                )
        except sqlite3.DatabaseError as e:
            raise OSError(errno.EIO, f"blob pack {self.path} unreadable: {e}") from e
        return None if row is None else (bytes(row[0]), row[1])

    # ---- many blobs ------------------------------------------------------------

    def sizes(self, shas: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        keys = [bytes.fromhex(s) for s in shas]
        for i in range(0, len(keys), _PAGE):
            page = keys[i : i + _PAGE]
            marks = ",".join("?" * len(page))
            with self._read_lock:
                rows = (
                    self._read()
                    .execute(f"SELECT sha256, {_SIZE} FROM blobs WHERE sha256 IN ({marks})", page)
                    .fetchall()
                )
            out.update((bytes(k).hex(), n) for k, n in rows)
        return out

    def delete(self, shas: Iterable[str], since: float = math.inf) -> int:
        """Delete these blobs except any written at or after `since`; returns the bytes freed."""
        freed = 0
        keys = [bytes.fromhex(s) for s in shas]
        for i in range(0, len(keys), _PAGE):
            with self._write_lock:
                db = self._write()
                db.execute("BEGIN IMMEDIATE")
                try:
                    for k in keys[i : i + _PAGE]:
                        row = db.execute(
                            f"DELETE FROM blobs WHERE sha256 = ? AND written < ? RETURNING {_SIZE}",
                            (k, since * 1000 if math.isfinite(since) else 2**62),
                        ).fetchone()
                        freed += row[0] if row is not None else 0
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        return freed

    def batches(self, size: int) -> Iterator[list[tuple[str, int, float]]]:
        """(sha256, size, written) of every packed blob, `size` at a time, in key order."""
        after = b""
        while True:
            with self._read_lock:
                rows = (
                    self._read()
                    .execute(
                        f"SELECT sha256, {_SIZE}, written FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
                        (after, size),
                    )
                    .fetchall()
                )
            if not rows:
                return
            yield [(bytes(k).hex(), n, w / 1000) for k, n, w in rows]
            after = bytes(rows[-1][0])
