"""The members of one export, kept on disk so that memory does not grow with the store.

Planning adds each member (and where its bytes come from) to a temporary SQLite
database in the store's temp directory, in any order. The bundle's order is read
back from it a page at a time: each checksum database's head, tiles and lookups,
then per module its versions in semver order (info, mod, zip), then its list and
latest. Only one module's rows are sorted in memory at once. The manifest lists
every member, so it grows with the store too: it is written from here to a temp
file, and the tar stream's exact size is summed on the way.

Every method blocks (SQLite, files): call them in a thread, one at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.golang import semver
from node.tools.bundle.format import FORMAT, FORMAT_VERSION, KIND_ORDER, MANIFEST_NAME, ManifestEntry
from node.tools.bundle.tar import BLOCK, RECORD, tar_header

#: Rows read, or written, per SQLite statement.
PAGE = 500
#: The section of module files, after every checksum database's (3 per database).
MODULES = 1 << 20

_SCHEMA = """
CREATE TABLE members (
    seq INTEGER PRIMARY KEY, section INTEGER NOT NULL, path TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT, module TEXT NOT NULL, version TEXT NOT NULL, h1 TEXT,
    fetched_at REAL, db TEXT NOT NULL, source TEXT NOT NULL, ref TEXT NOT NULL, body BLOB
);
CREATE INDEX members_order ON members (section, module);
CREATE TABLE versions (module TEXT NOT NULL, version TEXT NOT NULL, PRIMARY KEY (module, version)) WITHOUT ROWID;
"""
_COLUMNS = "seq, section, path, kind, size, sha256, module, version, h1, fetched_at, db, source, ref, body"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a member's bytes come from: a store blob (`ref` its sha256), `body` in hand,
    or a re-read of a (small, immutable) checksum-database cache file: a lookup (of
    the entry's module and version) or a tile (`ref` its path), of database `db`."""

    kind: str  # blob bytes lookup tile
    ref: str = ""
    body: bytes | None = None


Member = tuple[ManifestEntry, Source]


@dataclass(frozen=True, slots=True)
class Written:
    """The manifest file, and the totals of the bundle it describes."""

    path: Path
    size: int
    entries: int
    bytes: int
    counts: dict[str, int]
    tar_size: int


def module_order(e: ManifestEntry) -> tuple[str, bool, tuple[Any, ...], int]:
    """Per module: versions in semver order (info, mod, zip), then list and latest."""
    return (e.module, not e.version, semver.sort_key(e.version) if e.version else (), KIND_ORDER[e.kind])


def member_tar_size(name: str, size: int, mtime: float) -> int:
    """The bytes TarWriter writes for one member (tar.tar_size, one member at a time)."""
    return len(tar_header(name, size, mtime)) + size + -size % BLOCK


class PlanStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / f"export-{secrets.token_hex(6)}.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _SCHEMA)

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".json").unlink(missing_ok=True)

    # ---- planning --------------------------------------------------------------

    def add(self, members: Iterable[tuple[int, ManifestEntry, Source]]) -> None:
        """Members of `section` (a later member at the same path replaces the earlier)."""
        rows = [
            (
                s,
                e.path,
                e.kind,
                e.size,
                e.sha256,
                e.module,
                e.version,
                e.h1,
                e.fetched_at,
                e.db,
                src.kind,
                src.ref,
                src.body,
            )
            for s, e, src in members
        ]
        with self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO members ({_COLUMNS.removeprefix('seq, ')})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def add_versions(self, versions: Iterable[tuple[str, str]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO versions VALUES (?, ?)", versions)

    def version_pages(self) -> Iterator[list[tuple[str, str]]]:
        """The (module, version) pairs added, sorted, PAGE at a time."""
        after = ("", "")
        while page := self._db.execute(
            "SELECT module, version FROM versions WHERE (module, version) > (?, ?) ORDER BY module, version LIMIT ?",
            (*after, PAGE),
        ).fetchall():
            yield [(m, v) for m, v in page]
            after = page[-1]

    # ---- reading in bundle order -----------------------------------------------

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        after: tuple[int, str, int] = (-1, "", 0)
        while page := self._db.execute(
            f"SELECT {_COLUMNS} FROM members WHERE (section, module, seq) > (?, ?, ?)"
            " ORDER BY section, module, seq LIMIT ?",
            (*after, PAGE),
        ).fetchall():
            yield from page
            last = page[-1]
            after = (last[1], last[6], last[0])

    def ordered(self) -> Iterator[tuple[Member, ...]]:
        """Every member in bundle order, a few at a time (one module's at most)."""
        group: list[Member] = []
        for _seq, section, path, kind, size, sha, module, version, h1, fetched, db, source, ref, body in self._rows():
            member = (ManifestEntry(path, kind, size, sha, module, version, h1, fetched, db), Source(source, ref, body))
            if section != MODULES:
                yield (member,)
                continue
            if group and group[0][0].module != module:
                yield tuple(sorted(group, key=lambda m: module_order(m[0])))
                group = []
            group.append(member)
        if group:
            yield tuple(sorted(group, key=lambda m: module_order(m[0])))

    def write_manifest(self, header: dict[str, Any], created_at: float) -> Written:
        """The manifest (format.Manifest.to_bytes's layout, one entry per line) to a temp
        file beside the plan, and the size of the tar stream that carries it all."""
        entries, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM members").fetchone()
        head = {**header, "format": FORMAT, "format_version": FORMAT_VERSION}
        ordered = ("format", "format_version", "created", "origin", "selection", "sumdb")
        obj = {k: head[k] for k in ordered} | {"totals": {"entries": entries, "bytes": total}}
        obj["warnings"] = head["warnings"]
        path = self.path.with_suffix(".json")
        counts: dict[str, int] = {}
        members = 0
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1).removesuffix("\n}") + ',\n "entries": [')
            sep = "\n  "
            for group in self.ordered():
                for e, _ in group:
                    f.write(sep + json.dumps(e.to_json()))
                    sep = ",\n  "
                    counts[e.kind] = counts.get(e.kind, 0) + 1
                    members += member_tar_size(e.path, e.size, e.fetched_at or created_at)
            f.write("\n ]\n}\n")
        size = os.stat(path).st_size
        n = member_tar_size(MANIFEST_NAME, size, created_at) + members + 2 * BLOCK
        return Written(path, size, entries, total, counts, n + -n % RECORD)
