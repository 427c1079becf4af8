"""On-disk cache of one checksum database, laid out like the go command's own
(`GOMODCACHE/cache/download/sumdb/<db>/`), so it can be exported as-is:

    <data>/sumdb/<db>/latest                  newest verified signed tree head
    <data>/sumdb/<db>/lookups.sqlite           lookup replies, byte for byte
    <data>/sumdb/<db>/tile/8/<L>/<NNN>[.p/<W>] hash tiles (and data tiles)

Lookups are one small reply per module version, so they are packed in one SQLite
database rather than kept a file each (a 4 KiB block and an fsync per version);
a cache from before, `lookup/<m>@<v>` files, is moved into it when it is opened.
The database is in WAL mode with synchronous=NORMAL: a power cut may lose the last
lookups written (they are fetched again), never damage the others.

Only verified bytes are written here. A hash tile at a position is kept at the
widest width seen; any narrower `.p/W` request is its prefix (the hashes at a
position never change, so slicing is not making anything up).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from node.golang import modpath
from node.sumdb.tiles import Tile, parse_tile_path
from node.sumdb.tlog import HASH_SIZE, TlogError

log = logging.getLogger(__name__)


class SumDBStore:
    def __init__(self, root: Path, tmp_dir: Path, height: int = 8) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        self.height = height
        #: (level, index) -> widest width cached, for hash tiles.
        self._widths: dict[tuple[int, int], int] = {}
        self._full = False  # the last write found the disk full (warned once)
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # one connection, used from the loop's worker threads

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._pack_lookup_files()
        tiles = self.root / "tile" / str(self.height)
        if not tiles.is_dir():
            return
        for p in tiles.rglob("*"):
            if not p.is_file():
                continue
            try:
                t = parse_tile_path(p.relative_to(self.root).as_posix())
            except TlogError:
                continue
            if t.l >= 0 and t.w > self._widths.get((t.l, t.n), 0):
                self._widths[(t.l, t.n)] = t.w

    # ---- files -----------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> bool:
        """Store verified bytes; False (and nothing half-written) if the disk is full:
        the caller still has them, only the cache misses them."""
        tmp = self.tmp_dir / f"sumdb-{secrets.token_hex(8)}.part"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not self._full:
                log.warning("checksum database cache %s not written: %s", self.root, e.strerror)
            self._full = True
            return False
        self._full = False
        return True

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    # ---- latest ----------------------------------------------------------

    def latest(self) -> bytes | None:
        return self._read(self.root / "latest")

    def put_latest(self, note: bytes) -> None:
        self._write(self.root / "latest", note)

    # ---- lookups ---------------------------------------------------------

    def _lookups_db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.root / "lookups.sqlite", timeout=10.0, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS lookups (module TEXT NOT NULL, version TEXT NOT NULL,"
                    " reply BLOB NOT NULL, PRIMARY KEY (module, version)) WITHOUT ROWID"
                )
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def lookup(self, module: str, version: str) -> bytes | None:
        """The cached reply; None if there is none, or the pack cannot be read (a full
        disk kept it from being created: the caller fetches the reply)."""
        try:
            with self._db_lock:
                row = (
                    self._lookups_db()
                    .execute("SELECT reply FROM lookups WHERE module = ? AND version = ?", (module, version))
                    .fetchone()
                )
        except sqlite3.OperationalError as e:
            if not self._full:
                log.warning("checksum database cache %s cannot be read: %s", self.root, e)
            self._full = True
            return None
        return bytes(row[0]) if row is not None else None

    def put_lookup(self, module: str, version: str, reply: bytes) -> bool:
        """Store a verified reply; False if the disk is full (warned once)."""
        return self._put_lookups([(module, version, reply)])

    def _put_lookups(self, rows: list[tuple[str, str, bytes]]) -> bool:
        try:
            with self._db_lock:
                db = self._lookups_db()
                with db:
                    db.executemany("INSERT OR REPLACE INTO lookups VALUES (?, ?, ?)", rows)
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", 0) & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise
            if not self._full:
                log.warning("checksum database cache %s not written: %s", self.root, e)
            self._full = True
            return False
        self._full = False
        return True

    def lookups(self) -> Iterator[tuple[str, str, bytes]]:
        after = ("", "")
        while True:
            with self._db_lock:
                page = (
                    self._lookups_db()
                    .execute(
                        "SELECT module, version, reply FROM lookups WHERE (module, version) > (?, ?)"
                        " ORDER BY module, version LIMIT 500",
                        after,
                    )
                    .fetchall()
                )
            if not page:
                return
            for module, version, reply in page:
                yield module, version, bytes(reply)
            after = (page[-1][0], page[-1][1])

    def _pack_lookup_files(self) -> None:
        """Move a cache's `lookup/<m>@<v>` files (from before the pack) into the pack."""
        base = self.root / "lookup"
        if not base.is_dir():
            return
        rows: list[tuple[str, str, bytes]] = []
        moved = 0
        for p in base.rglob("*@*"):
            esc_m, _, esc_v = p.relative_to(base).as_posix().rpartition("@")
            with contextlib.suppress(ValueError, OSError):
                rows.append((modpath.unescape_path(esc_m), modpath.unescape_version(esc_v), p.read_bytes()))
            if len(rows) >= 500:
                moved += len(rows) if self._put_lookups(rows) else 0
                rows = []
        if (self._put_lookups(rows) if rows else True) and not self._full:
            moved += len(rows)
            shutil.rmtree(base, ignore_errors=True)
            log.info("checksum database cache %s: %d lookup files packed into lookups.sqlite", self.root, moved)

    # ---- tiles -----------------------------------------------------------

    def width(self, level: int, index: int) -> int:
        return self._widths.get((level, index), 0)

    def partial_positions(self) -> list[tuple[int, int, int]]:
        full = 1 << self.height
        return [(lv, n, w) for (lv, n), w in self._widths.items() if w < full]

    def tile(self, tile: Tile) -> bytes | None:
        """The tile's bytes, sliced from the widest cached version at its position."""
        if tile.l < 0:
            return self._read(self.root / tile.path())
        have = self._widths.get((tile.l, tile.n), 0)
        if have < tile.w:
            have = self._rescan(tile)  # another process (an import) may have stored it
            if have < tile.w:
                return None
        stored = Tile(tile.h, tile.l, tile.n, have)
        data = self._read(self.root / stored.path())
        if data is None or len(data) != have * HASH_SIZE:
            self._widths.pop((tile.l, tile.n), None)
            return None
        return data[: tile.w * HASH_SIZE]

    def _rescan(self, tile: Tile) -> int:
        full = Tile(tile.h, tile.l, tile.n, 1 << tile.h)
        path = self.root / full.path()
        widths = [full.w] if path.is_file() else []
        partials = path.parent / f"{path.name}.p"
        if not widths and partials.is_dir():
            widths = [int(p.name) for p in partials.iterdir() if p.name.isdigit() and p.is_file()]
        have = max(widths, default=0)
        if have > self._widths.get((tile.l, tile.n), 0):
            self._widths[(tile.l, tile.n)] = have
        return self._widths.get((tile.l, tile.n), 0)

    def put_tile(self, tile: Tile, data: bytes) -> None:
        if tile.l < 0:
            self._write(self.root / tile.path(), data)
            return
        have = self._widths.get((tile.l, tile.n), 0)
        if tile.w <= have:
            return
        if not self._write(self.root / tile.path(), data):
            return
        self._widths[(tile.l, tile.n)] = tile.w
        if have:  # the narrower version is a prefix of this one: drop it
            try:
                (self.root / Tile(tile.h, tile.l, tile.n, have).path()).unlink()
            except FileNotFoundError:
                pass

    def tiles_view(self, pending: Mapping[Tile, bytes]) -> Mapping[Tile, bytes]:
        return _TilesView(self, pending)


class _TilesView(Mapping[Tile, bytes]):
    """Cached tiles plus fetched-but-not-yet-verified ones, for tiles.tile_hash_reader."""

    def __init__(self, store: SumDBStore, pending: Mapping[Tile, bytes]) -> None:
        self.store = store
        self.pending = pending

    def __getitem__(self, tile: Tile) -> bytes:
        data = self.pending.get(tile)
        if data is None:
            data = self.store.tile(tile)
        if data is None:
            raise KeyError(tile)
        return data

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.pending)

    def __len__(self) -> int:
        return len(self.pending)
