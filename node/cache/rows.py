"""The index's tables and the records read from them (node/cache/index.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
