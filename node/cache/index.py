"""SQLite index of what the store holds (aiosqlite, WAL).

`entries`: immutable versioned files (module, version, kind) -> blob, with the
hashes and provenance recorded when they were verified. Each row gets a serial
number from AUTOINCREMENT, so "everything after serial N" is a change log the
mesh can follow (devpi's changelog / Syncthing's delta index); `epoch` names this
store, so a peer notices when it was reset.

`meta`: the mutable answers (`@v/list`, `@latest`), kept small and whole.

Access statistics (hits, last access) are buffered in memory and flushed in
batches: the hit path never waits on a write.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    serial      INTEGER PRIMARY KEY AUTOINCREMENT,
    module      TEXT NOT NULL,
    version     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('info', 'mod', 'zip')),
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    h1          TEXT,
    source      TEXT NOT NULL,
    fetched_at  REAL NOT NULL,
    last_access REAL,
    hits        INTEGER NOT NULL DEFAULT 0,
    unverified  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (module, version, kind)
);
CREATE INDEX IF NOT EXISTS entries_sha256 ON entries (sha256);
CREATE TABLE IF NOT EXISTS meta (
    module     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('list', 'latest')),
    body       BLOB NOT NULL,
    source     TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (module, kind)
);
CREATE TABLE IF NOT EXISTS node_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- version queries (`.info` of a branch, tag name or commit prefix) and what they resolved to
CREATE TABLE IF NOT EXISTS queries (
    module     TEXT NOT NULL,
    query      TEXT NOT NULL,
    body       BLOB NOT NULL,
    source     TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (module, query)
);
-- storage limits (node/storage.py): GOPRIVATE-style patterns eviction never touches
CREATE TABLE IF NOT EXISTS pins (
    pattern    TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    module: str
    version: str
    kind: str
    sha256: str
    size: int
    h1: str | None
    source: str
    fetched_at: float
    serial: int = 0
    #: The checksum database could not confirm its h1 yet (sumdb_verify = "sumdb" while
    #: the database did not answer): served to clients, never offered to peers or exported.
    unverified: bool = False


@dataclass(frozen=True, slots=True)
class MetaEntry:
    module: str
    kind: str
    body: bytes
    source: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class Usage:
    """What eviction weighs for one row (node/storage.py)."""

    module: str
    version: str
    kind: str
    sha256: str
    size: int
    hits: int
    last_access: float | None
    fetched_at: float


_ENTRY_COLS = "module, version, kind, sha256, size, h1, source, fetched_at, serial, unverified"


def _entry(row: Sequence[Any]) -> Entry:
    m, v, k, sha, size, h1, source, fetched_at, serial, unverified = row
    return Entry(m, v, k, sha, size, h1, source, fetched_at, serial, bool(unverified))


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._access: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.epoch = ""

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "Index.open() first"
        return self._db

    async def open(self) -> None:
        self._db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against process crashes (kill -9) in WAL mode.
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.executescript(SCHEMA)
        async with self.db.execute("PRAGMA table_info(entries)") as cur:
            columns = {row[1] for row in await cur.fetchall()}
        if "unverified" not in columns:  # an index from before sumdb_verify's unverified state
            await self.db.execute("ALTER TABLE entries ADD COLUMN unverified INTEGER NOT NULL DEFAULT 0")
        async with self.db.execute("SELECT value FROM node_state WHERE key='epoch'") as cur:
            row = await cur.fetchone()
        if row is None:
            self.epoch = secrets.token_hex(8)
            await self.db.execute("INSERT INTO node_state VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = row[0]
        await self.db.commit()

    async def aclose(self) -> None:
        if self._db is not None:
            await self.flush_access()
            await self._db.close()
            self._db = None

    async def get(self, module: str, version: str, kind: str) -> Entry | None:
        async with self.db.execute(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE module=? AND version=? AND kind=?",
            (module, version, kind),
        ) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def _write(self, sql: str, params: Sequence[object]) -> aiosqlite.Cursor:
        """One statement in its own transaction; rolled back if it fails (a full disk)."""
        try:
            cur = await self.db.execute(sql, params)
            await self.db.commit()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await self.db.rollback()
            raise
        return cur

    async def put(self, e: Entry) -> Entry:
        """Record a verified blob. Versioned files are immutable: an existing row wins."""
        await self._write(
            "INSERT INTO entries (module, version, kind, sha256, size, h1, source, fetched_at, unverified)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (module, version, kind) DO NOTHING",
            (e.module, e.version, e.kind, e.sha256, e.size, e.h1, e.source, e.fetched_at, int(e.unverified)),
        )
        got = await self.get(e.module, e.version, e.kind)
        assert got is not None
        return got

    async def delete(self, module: str, version: str, kind: str) -> None:
        await self.db.execute("DELETE FROM entries WHERE module=? AND version=? AND kind=?", (module, version, kind))
        await self.db.commit()

    async def changes_since(self, serial: int, limit: int = 1000, verified_only: bool = False) -> list[Entry]:
        """Rows after `serial`, oldest first. A row that becomes verified gets a new serial
        (mark_verified), so a reader of verified rows sees it then."""
        where = "serial > ? AND unverified = 0" if verified_only else "serial > ?"
        async with self.db.execute(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE {where} ORDER BY serial LIMIT ?",
            (serial, limit),
        ) as cur:
            return [_entry(r) for r in await cur.fetchall()]

    async def unverified(self, limit: int = 500) -> list[Entry]:
        async with self.db.execute(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE unverified = 1 ORDER BY serial LIMIT ?", (limit,)
        ) as cur:
            return [_entry(r) for r in await cur.fetchall()]

    async def count_unverified(self) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM entries WHERE unverified = 1") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def mark_verified(self, e: Entry) -> Entry | None:
        """The database confirmed the row's h1: clear the mark and give the row a new
        serial (it enters the change log now). None if the row changed meanwhile."""
        try:
            cur = await self.db.execute(
                "DELETE FROM entries WHERE module=? AND version=? AND kind=? AND sha256=? AND unverified=1"
                " RETURNING hits, last_access",
                (e.module, e.version, e.kind, e.sha256),
            )
            row = await cur.fetchone()
            if row is None:
                await self.db.rollback()
                return None
            await self.db.execute(
                "INSERT INTO entries (module, version, kind, sha256, size, h1, source, fetched_at, hits, last_access)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.module, e.version, e.kind, e.sha256, e.size, e.h1, e.source, e.fetched_at, row[0], row[1]),
            )
            await self.db.commit()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await self.db.rollback()
            raise
        return await self.get(e.module, e.version, e.kind)

    async def get_meta(self, module: str, kind: str) -> MetaEntry | None:
        async with self.db.execute(
            "SELECT module, kind, body, source, fetched_at FROM meta WHERE module=? AND kind=?",
            (module, kind),
        ) as cur:
            row = await cur.fetchone()
        return MetaEntry(row[0], row[1], bytes(row[2]), row[3], row[4]) if row else None

    async def all_meta(self) -> list[MetaEntry]:
        """Every cached list/latest answer (for export)."""
        async with self.db.execute(
            "SELECT module, kind, body, source, fetched_at FROM meta ORDER BY module, kind"
        ) as cur:
            return [MetaEntry(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in await cur.fetchall()]

    async def put_meta(self, m: MetaEntry) -> None:
        await self._write(
            "INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?)",
            (m.module, m.kind, m.body, m.source, m.fetched_at),
        )

    async def get_query(self, module: str, query: str) -> MetaEntry | None:
        """A query's answer, as a MetaEntry whose kind is the query."""
        async with self.db.execute(
            "SELECT module, query, body, source, fetched_at FROM queries WHERE module=? AND query=?",
            (module, query),
        ) as cur:
            row = await cur.fetchone()
        return MetaEntry(row[0], row[1], bytes(row[2]), row[3], row[4]) if row else None

    async def put_query(self, m: MetaEntry) -> None:
        await self._write(
            "INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?, ?)",
            (m.module, m.kind, m.body, m.source, m.fetched_at),
        )

    async def held_versions(self, module: str) -> list[tuple[str, str | None]]:
        """(version, sha256 of its .info or None) for every version of `module` the store
        holds a file of."""
        async with self.db.execute(
            "SELECT version, MAX(CASE WHEN kind='info' THEN sha256 END) FROM entries WHERE module=? GROUP BY version",
            (module,),
        ) as cur:
            return [(str(v), s) for v, s in await cur.fetchall()]

    async def totals(self) -> tuple[int, int]:
        """(number of entries, bytes of distinct blobs)."""
        async with self.db.execute("SELECT COUNT(*) FROM entries") as cur:
            (count,) = await cur.fetchone() or (0,)
        async with self.db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT sha256, size FROM entries)"
        ) as cur:
            (size,) = await cur.fetchone() or (0,)
        return int(count), int(size)

    def touch(self, module: str, version: str, kind: str, now: float) -> None:
        key = (module, version, kind)
        hits, _ = self._access.get(key, (0, 0.0))
        self._access[key] = (hits + 1, now)

    async def flush_access(self) -> None:
        if not self._access or self._db is None:
            return
        batch, self._access = self._access, {}
        try:
            await self.db.executemany(
                "UPDATE entries SET hits = hits + ?, last_access = MAX(COALESCE(last_access, 0), ?)"
                " WHERE module=? AND version=? AND kind=?",
                [(h, t, m, v, k) for (m, v, k), (h, t) in batch.items()],
            )
            await self.db.commit()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await self.db.rollback()
            raise

    # ---- storage limits (node/storage.py) ------------------------------------------

    async def usage(self) -> list[Usage]:
        async with self.db.execute(
            "SELECT module, version, kind, sha256, size, hits, last_access, fetched_at FROM entries"
        ) as cur:
            return [Usage(*r) for r in await cur.fetchall()]

    async def delete_entries(self, keys: Sequence[tuple[str, str, str]]) -> None:
        """Delete (module, version, kind) rows in one transaction."""
        if not keys:
            return
        await self.db.executemany("DELETE FROM entries WHERE module=? AND version=? AND kind=?", keys)
        await self.db.commit()

    async def is_referenced(self, sha256: str) -> bool:
        async with self.db.execute("SELECT 1 FROM entries WHERE sha256=? LIMIT 1", (sha256,)) as cur:
            return await cur.fetchone() is not None

    async def delete_stale_meta(self, fetched_before: float) -> int:
        """Drop list/latest answers older than `fetched_before` of modules with no cached files."""
        cur = await self.db.execute(
            "DELETE FROM meta WHERE fetched_at < ? AND module NOT IN (SELECT module FROM entries)",
            (fetched_before,),
        )
        await self.db.commit()
        return int(cur.rowcount)

    async def pins(self) -> list[tuple[str, float]]:
        async with self.db.execute("SELECT pattern, created_at FROM pins ORDER BY pattern") as cur:
            return [(str(p), float(t)) for p, t in await cur.fetchall()]

    async def add_pin(self, pattern: str, now: float) -> bool:
        cur = await self.db.execute("INSERT INTO pins VALUES (?, ?) ON CONFLICT (pattern) DO NOTHING", (pattern, now))
        await self.db.commit()
        return bool(cur.rowcount)

    async def remove_pin(self, pattern: str) -> bool:
        cur = await self.db.execute("DELETE FROM pins WHERE pattern=?", (pattern,))
        await self.db.commit()
        return bool(cur.rowcount)
