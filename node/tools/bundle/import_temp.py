"""What an import keeps on disk so that its memory does not grow with the bundle.

Two temporary SQLite databases, each one file in a temp directory (a node's: the
store's, removed at the end, on errors, and at the next start if the process died):

- `Expected`: the manifest's entries, added as they are parsed, looked up (and
  marked seen) by path as each member arrives; the ones never seen are read back
  at the end, a page at a time, in the manifest's order.
- `OutcomeLog`: a report's per-entry outcomes past the first few (importing.Report
  keeps those and the counts in memory), read back a page at a time in order.

Every method blocks (SQLite): call them in a thread, one at a time per database.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from node.tools.bundle.format import ManifestEntry

#: Rows read per SQLite statement.
PAGE = 1000

_ENTRY_COLUMNS = "path, kind, size, sha256, module, version, h1, fetched_at, db"
_OUTCOME_COLUMNS = "path, kind, status, module, version, reason"


class _TempDB:
    def __init__(self, directory: Path, prefix: str, schema: str) -> None:
        self.path = directory / f"{prefix}-{secrets.token_hex(6)}.sqlite"
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, check_same_thread=False)
        # Nothing here must survive a crash: no journal, no fsync; a small page cache.
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -4096; "
            "PRAGMA temp_store = FILE;" + schema
        )

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path} is closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.path.unlink(missing_ok=True)


class Expected(_TempDB):
    """The manifest's entries by path, each marked once its member has arrived."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory,
            "import-manifest",
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,"
            " size INTEGER NOT NULL, sha256 TEXT, module TEXT NOT NULL, version TEXT NOT NULL, h1 TEXT,"
            " fetched_at REAL, db TEXT NOT NULL, seen INTEGER NOT NULL DEFAULT 0);",
        )
        self.count = 0

    def add(self, entries: Iterable[ManifestEntry]) -> None:
        """More entries, in the manifest's order (a later one at the same path replaces
        the earlier, as a dict by path would)."""
        rows = [(e.path, e.kind, e.size, e.sha256, e.module, e.version, e.h1, e.fetched_at, e.db) for e in entries]
        with self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        self.count += len(rows)

    def claim(self, path: str) -> tuple[ManifestEntry | None, bool]:
        """The entry at `path` (None: not listed) and whether it was claimed before; it
        is marked claimed."""
        row = self.db.execute(f"SELECT seq, seen, {_ENTRY_COLUMNS} FROM entries WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None, False
        if not row[1]:
            with self.db:
                self.db.execute("UPDATE entries SET seen = 1 WHERE seq = ?", (row[0],))
        return ManifestEntry(*row[2:]), bool(row[1])

    def unseen(self) -> Iterator[list[ManifestEntry]]:
        """The entries never claimed, in the manifest's order, PAGE at a time."""
        after = 0
        while page := self.db.execute(
            f"SELECT seq, {_ENTRY_COLUMNS} FROM entries WHERE seq > ? AND NOT seen ORDER BY seq LIMIT ?",
            (after, PAGE),
        ).fetchall():
            yield [ManifestEntry(*row[1:]) for row in page]
            after = page[-1][0]


class OutcomeLog(_TempDB):
    """A report's outcomes, in the order they were added: rows of `_OUTCOME_COLUMNS`."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory,
            "import-report",
            "CREATE TABLE outcomes (seq INTEGER PRIMARY KEY, path TEXT NOT NULL, kind TEXT NOT NULL,"
            " status TEXT NOT NULL, module TEXT NOT NULL, version TEXT NOT NULL, reason TEXT NOT NULL);",
        )

    def add(self, rows: Iterable[tuple[str, str, str, str, str, str]]) -> None:
        with self.db:
            self.db.executemany(f"INSERT INTO outcomes ({_OUTCOME_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def pages(self, status: str | None = None) -> Iterator[list[tuple[Any, ...]]]:
        """The rows (only those of `status` if given) PAGE at a time."""
        where = "" if status is None else "AND status = ?"
        after = 0
        while page := self.db.execute(
            f"SELECT seq, {_OUTCOME_COLUMNS} FROM outcomes WHERE seq > ? {where} ORDER BY seq LIMIT ?",
            (after, *(() if status is None else (status,)), PAGE),
        ).fetchall():
            yield [row[1:] for row in page]
            after = page[-1][0]
