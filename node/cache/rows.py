"""The index's tables and the records read from them (node/cache/index.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.cache import journal

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
    checked_at  REAL NOT NULL DEFAULT 0,
    checked_boot INTEGER NOT NULL DEFAULT 0,
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
-- files the checksum database has not confirmed yet (the reverifier counts them at start)
CREATE INDEX IF NOT EXISTS entries_unverified ON entries (serial) WHERE unverified = 1;
-- Kept by the triggers below, in the same transaction as every change to `entries`, so
-- that nothing has to count the entries: each distinct blob with the rows that refer
-- to it, the store's totals, and each module's figures (the dashboard's top modules).
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    refs   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    files INTEGER NOT NULL,
    blobs INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    module    TEXT PRIMARY KEY,
    files     INTEGER NOT NULL,
    versions  INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    hits      INTEGER NOT NULL,
    last_used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS modules_top ON modules (hits DESC, bytes DESC, module);
"""

#: The running figures, recomputed from `entries` (an index from before them, or a
#: check that they still add up): one full scan.
RECOUNT = """
DELETE FROM blobs;
INSERT INTO blobs SELECT sha256, MAX(size), COUNT(*) FROM entries GROUP BY sha256;
DELETE FROM modules;
INSERT INTO modules SELECT module, COUNT(*), COUNT(DISTINCT version), SUM(size), SUM(hits),
    MAX(COALESCE(last_access, fetched_at)) FROM entries GROUP BY module;
INSERT OR REPLACE INTO totals VALUES (0, (SELECT COUNT(*) FROM entries), (SELECT COUNT(*) FROM blobs),
    (SELECT COALESCE(SUM(size), 0) FROM blobs));
"""

#: Every change to `entries` keeps `blobs`, `totals` and `modules` in step. Rows are
#: immutable but for hits, last access, checks and the unverified mark.
TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN
    INSERT INTO blobs VALUES (new.sha256, new.size, 1) ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1;
    UPDATE totals SET files = files + 1;
    INSERT INTO modules VALUES (new.module, 1, 1, new.size, new.hits, COALESCE(new.last_access, new.fetched_at))
    ON CONFLICT (module) DO UPDATE SET
        files = files + 1,
        versions = versions + NOT EXISTS (
            SELECT 1 FROM entries WHERE module = new.module AND version = new.version AND kind != new.kind),
        bytes = bytes + new.size,
        hits = hits + new.hits,
        last_used = MAX(last_used, COALESCE(new.last_access, new.fetched_at));
END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN
    UPDATE blobs SET refs = refs - 1 WHERE sha256 = old.sha256;
    DELETE FROM blobs WHERE sha256 = old.sha256 AND refs <= 0;
    UPDATE totals SET files = files - 1;
    UPDATE modules SET
        files = files - 1,
        versions = versions - NOT EXISTS (SELECT 1 FROM entries WHERE module = old.module AND version = old.version),
        bytes = bytes - old.size,
        hits = hits - old.hits,
        last_used = COALESCE(
            (SELECT MAX(COALESCE(last_access, fetched_at)) FROM entries WHERE module = old.module), last_used)
    WHERE module = old.module;
    DELETE FROM modules WHERE module = old.module AND files <= 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_used AFTER UPDATE OF hits, last_access ON entries BEGIN
    UPDATE modules SET
        hits = hits + new.hits - old.hits,
        last_used = MAX(last_used, COALESCE(new.last_access, new.fetched_at))
    WHERE module = new.module;
END;
CREATE TRIGGER IF NOT EXISTS blobs_added AFTER INSERT ON blobs BEGIN
    UPDATE totals SET blobs = blobs + 1, bytes = bytes + new.size;
END;
CREATE TRIGGER IF NOT EXISTS blobs_removed AFTER DELETE ON blobs BEGIN
    UPDATE totals SET blobs = blobs - 1, bytes = bytes - old.size;
END;
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
    #: The run of the node (`Index.boot`) in which the blob's bytes were last hashed.
    checked_boot: int = 0


@dataclass(frozen=True, slots=True)
class MetaEntry:
    module: str
    kind: str
    body: bytes
    source: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class Totals:
    """The store's running totals (kept by the triggers)."""

    #: Index rows: versioned files.
    files: int
    #: Distinct blobs the rows refer to, and their bytes (each counted once).
    blobs: int
    bytes: int


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


ENTRY_COLUMNS = "module, version, kind, sha256, size, h1, source, fetched_at, serial, unverified, checked_boot"


def entry_from_row(row: Sequence[Any]) -> Entry:
    m, v, k, sha, size, h1, source, fetched_at, serial, unverified, boot = row
    return Entry(m, v, k, sha, size, h1, source, fetched_at, serial, bool(unverified), boot)


class IndexDamaged(Exception):
    """SQLite reports the index file damaged (or it is no database at all)."""


def replay_statement(r: journal.Record) -> tuple[str, tuple[object, ...]]:
    """The index change a journal record stands for (the journal replayed into the index)."""
    if isinstance(r, journal.Put):
        return (
            "INSERT INTO entries (module, version, kind, sha256, size, h1, source, fetched_at, unverified)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (module, version, kind) DO NOTHING",
            (r.module, r.version, r.kind, r.sha256, r.size, r.h1, r.source, r.fetched_at, int(r.unverified)),
        )
    if isinstance(r, journal.Delete):
        return "DELETE FROM entries WHERE module=? AND version=? AND kind=?", (r.module, r.version, r.kind)
    if isinstance(r, journal.Confirmed):
        return (
            "UPDATE entries SET unverified=0 WHERE module=? AND version=? AND kind=? AND sha256=?",
            (r.module, r.version, r.kind, r.sha256),
        )
    if isinstance(r, journal.Pin):
        return "INSERT INTO pins VALUES (?, ?) ON CONFLICT (pattern) DO NOTHING", (r.pattern, r.created_at)
    return "DELETE FROM pins WHERE pattern=?", (r.pattern,)
