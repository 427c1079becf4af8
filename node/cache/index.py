"""SQLite index of what the store holds (aiosqlite, WAL).

`entries`: immutable versioned files (module, version, kind) -> blob, with the
hashes and provenance recorded when they were verified. Each row gets a serial
number from AUTOINCREMENT, so "everything after serial N" is a change log the
mesh can follow (devpi's changelog / Syncthing's delta index); `epoch` names this
store, so a peer notices when it was reset.

`meta`: the mutable answers (`@v/list`, `@latest`), kept small and whole.

Access statistics (hits, last access) are buffered in memory and flushed in
batches: the hit path never waits on a write.

Every change to `entries` and `pins` is written to the journal (node/cache/journal.py)
before the index, so the index can be rebuilt from the journal and the blobs
(node/cache/recovery.py). `checked_at` / `checked_boot` record when a blob's bytes were
last re-hashed and in which run of the node (`boot`, counted up at each open): a blob is
served only once it was checked in this run (node/cache/integrity.py).

Nothing on a timer or on a request reads the whole table: triggers keep `blobs` (each
distinct blob and how many rows refer to it), `totals` and `modules` in step with
`entries` (node/cache/rows.py), so the store's size, the eviction and gc scans
(node/cache/index_storage.py, in batches) and the dashboard's top modules cost the
same at a thousand files as at a million.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite

from node.cache import journal
from node.cache.index_meta import MetaQueries
from node.cache.index_storage import StorageQueries
from node.cache.journal import Journal
from node.cache.rows import (
    ENTRY_COLUMNS,
    RECOUNT,
    SCHEMA,
    TRIGGERS,
    Entry,
    IndexDamaged,
    MetaEntry,
    Totals,
    Usage,
    entry_from_row,
    replay_statement,
)

__all__ = ["Entry", "Index", "IndexDamaged", "MetaEntry", "Totals", "Usage"]

#: A sqlite3 error that means the file itself is bad, not the statement.
_DAMAGE = (sqlite3.DatabaseError,)
#: Rows of buffered hits written per transaction. Random rows dirty a page each: a row
#: cost 31 us in transactions of 1,000 rows, 17 us at 10,000 (100k cached versions).
FLUSH_ROWS = 10_000
#: Buffered hits wait this long for a stats tick to write them (the dashboard, eviction
#: and closing write them at once), or until this many files have some (about 320 bytes
#: each). Under random-key load at 100k cached versions, a write every 5 s tick took
#: 10-20 % of a core: most files were met again, one row each, at each tick.
ACCESS_FLUSH = 60.0
ACCESS_KEYS = 50_000
_GET = f"SELECT {ENTRY_COLUMNS} FROM entries WHERE module=? AND version=? AND kind=?"


class Index(StorageQueries, MetaQueries):
    def __init__(self, path: Path, journal: Journal | None = None) -> None:
        self.path = path
        self.journal = journal
        self._db: aiosqlite.Connection | None = None
        self._access: dict[tuple[str, str, str], tuple[int, float]] = {}
        #: Blobs hashed right on their first serve in this run, not written yet (flushed
        #: with the access statistics): sha256 -> when.
        self._checked: dict[str, float] = {}
        self._flushed = time.monotonic()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self.epoch = ""
        #: This run of the node: counted up at each open.
        self.boot = 0

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "Index.open() first"
        return self._db

    async def open(self) -> None:
        """Open (creating if needed) and check the index; IndexDamaged if SQLite finds
        it damaged (node/cache/recovery.py then rebuilds it)."""
        try:
            self._db = await aiosqlite.connect(self.path)
            await self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: durable against process crashes (kill -9); a power cut
            # may lose the last transactions, which the fsynced journal restores
            # (docs/durability.md).
            await self.db.execute("PRAGMA synchronous=NORMAL")
            async with self.db.execute("PRAGMA quick_check") as cur:
                problems = [str(r[0]) for r in await cur.fetchall()]
            if problems != ["ok"]:
                raise IndexDamaged("; ".join(problems[:3]))
            await self._schema()
        except _DAMAGE as e:
            await self.close_quietly()
            raise IndexDamaged(str(e)) from e
        except IndexDamaged:
            await self.close_quietly()
            raise

    async def _schema(self) -> None:
        await self.db.executescript(SCHEMA)
        async with self.db.execute("PRAGMA table_info(entries)") as cur:
            columns = {row[1] for row in await cur.fetchall()}
        if "unverified" not in columns:  # an index from before sumdb_verify's unverified state
            await self.db.execute("ALTER TABLE entries ADD COLUMN unverified INTEGER NOT NULL DEFAULT 0")
        if "checked_at" not in columns:  # an index from before the scrub: due by age
            await self.db.execute("ALTER TABLE entries ADD COLUMN checked_at REAL NOT NULL DEFAULT 0")
            await self.db.execute("ALTER TABLE entries ADD COLUMN checked_boot INTEGER NOT NULL DEFAULT 0")
            await self.db.execute("UPDATE entries SET checked_at = fetched_at")
        await self.db.execute("CREATE INDEX IF NOT EXISTS entries_checked ON entries (checked_at)")
        async with self.db.execute("SELECT 1 FROM totals") as cur:
            counted = await cur.fetchone() is not None
        if not counted:  # a new index, or one from before the running totals: count once
            await self.db.executescript("BEGIN;" + RECOUNT + "COMMIT;")
        await self.db.executescript(TRIGGERS)
        self.epoch = await self.state("epoch") or ""
        if not self.epoch:
            self.epoch = secrets.token_hex(8)
            await self.set_state("epoch", self.epoch)
        self.boot = int(await self.state("boot") or 0) + 1
        await self.set_state("boot", str(self.boot))
        await self.db.commit()

    async def state(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM node_state WHERE key=?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_state(self, key: str, value: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO node_state VALUES (?, ?)", (key, value))

    async def close_quietly(self) -> None:
        self._close_reader()
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.close()
            self._db = None

    async def _journal(self, *records: journal.Record) -> None:
        if self.journal is not None and records:
            await self.journal.append(*records)

    async def aclose(self) -> None:
        self._close_reader()
        if self._db is not None:
            await self.flush_access()
            if self.journal is not None:
                # Everything up to here is in the index: the next start replays from here.
                await self.set_state("journal_pos", str(self.journal.size))
                await self.db.commit()
            with contextlib.suppress(sqlite3.Error):
                await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.close()
            self._db = None

    async def get(self, module: str, version: str, kind: str) -> Entry | None:
        rows = await self.db.execute_fetchall(_GET, (module, version, kind))  # one trip to its thread
        return next((entry_from_row(r) for r in rows), None)

    def get_blocking(self, module: str, version: str, kind: str) -> Entry | None:
        """`get` for a worker thread (a hit's row and blob in one trip off the loop), on a
        read-only connection of its own: it sees every committed row, and rows are
        committed before anything that wrote them returns."""
        with self._reader_lock:
            if self._reader is None:
                uri = self.path.absolute().as_uri() + "?mode=ro"  # `--data` may be relative
                self._reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
            rows = self._reader.execute(_GET, (module, version, kind)).fetchall()  # done: no snapshot kept
        return next((entry_from_row(r) for r in rows), None)

    def _close_reader(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """Commit what the block wrote; roll it back if SQLite fails (a full disk)."""
        try:
            yield
            await self.db.commit()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await self.db.rollback()
            raise

    async def _write(self, sql: str, params: Sequence[object]) -> aiosqlite.Cursor:
        """One statement in its own transaction."""
        async with self._transaction():
            return await self.db.execute(sql, params)

    async def put(self, e: Entry) -> Entry:
        """Record a verified blob whose bytes were hashed as they were written (so it
        counts as checked now, in this run). Versioned files are immutable: an existing
        row wins."""
        await self._journal(
            journal.Put(e.module, e.version, e.kind, e.sha256, e.size, e.h1, e.source, e.fetched_at, e.unverified)
        )
        await self.insert(e, time.time())
        got = await self.get(e.module, e.version, e.kind)
        assert got is not None
        return got

    async def insert(self, e: Entry, checked_at: float | None) -> bool:
        """The row alone, without the journal (a rebuild, or a replay of the journal:
        `checked_at` None, its blob is hashed before it is served). True if inserted."""
        boot = 0 if checked_at is None else self.boot
        cur = await self._write(
            "INSERT INTO entries (module, version, kind, sha256, size, h1, source, fetched_at, unverified,"
            " checked_at, checked_boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (module, version, kind) DO NOTHING",
            (
                e.module,
                e.version,
                e.kind,
                e.sha256,
                e.size,
                e.h1,
                e.source,
                e.fetched_at,
                int(e.unverified),
                checked_at or 0.0,
                boot,
            ),
        )
        return bool(cur.rowcount)

    async def delete(self, module: str, version: str, kind: str) -> None:
        await self._journal(journal.Delete(module, version, kind))
        await self.db.execute("DELETE FROM entries WHERE module=? AND version=? AND kind=?", (module, version, kind))
        await self.db.commit()

    async def apply(self, r: journal.Record) -> bool:
        """Apply one journal record to the tables (a replay: not journalled again); True
        if it changed them. A Put whose row exists changes nothing (the first admission wins)."""
        return await self.apply_many([r]) > 0

    async def apply_many(self, records: Sequence[journal.Record]) -> int:
        """Apply journal records in order, in one transaction (a rebuild or a replay: not
        journalled again, rows never checked); returns how many changed the tables."""
        changed = 0
        async with self._transaction():
            for r in records:
                sql, args = replay_statement(r)
                changed += (await self.db.execute(sql, args)).rowcount
        return changed

    async def journal_batches(self, batch: int = 5000) -> AsyncIterator[list[journal.Record]]:
        """The index's state as journal records (to start or compact the journal), a batch
        at a time: memory does not grow with the index."""
        serial = 0
        while rows := await self.changes_since(serial, batch):
            yield [
                journal.Put(e.module, e.version, e.kind, e.sha256, e.size, e.h1, e.source, e.fetched_at, e.unverified)
                for e in rows
            ]
            serial = rows[-1].serial
        if pins := await self.pins():
            yield [journal.Pin(p, t) for p, t in pins]

    # ---- the blobs' checks (node/cache/integrity.py, scrub.py) ------------------------

    async def rows_of(self, sha256: str) -> list[Entry]:
        async with self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE sha256=?", (sha256,)) as cur:
            return [entry_from_row(r) for r in await cur.fetchall()]

    async def mark_checked(self, sha256: str, now: float) -> None:
        """The blob's bytes hashed right, now, in this run."""
        await self.mark_checked_many([sha256], now)

    async def mark_checked_many(self, shas: Sequence[str], now: float) -> None:
        """Blobs hashed right, now, in this run: one transaction."""
        for sha in shas:
            self._checked.pop(sha, None)
        await self.db.executemany(
            "UPDATE entries SET checked_at=?, checked_boot=? WHERE sha256=?", [(now, self.boot, s) for s in shas]
        )
        await self.db.commit()

    def note_checked(self, sha256: str, now: float) -> None:
        """A serve check passed: recorded at once for this run, written with the next
        flush (a hot path must not wait on a write per blob)."""
        self._checked[sha256] = now

    def checked_now(self, sha256: str) -> bool:
        """Checked in this run, and not written to the index yet."""
        return sha256 in self._checked

    async def mark_unchecked(self, sha256: str) -> None:
        """Hash the blob again before it is next served (it was found bad)."""
        self._checked.pop(sha256, None)
        await self._write("UPDATE entries SET checked_boot=0 WHERE sha256=?", (sha256,))

    async def remove_blob(self, sha256: str) -> list[Entry]:
        """Take every row of a blob out of the index (its bytes are bad); returns them."""
        rows = await self.rows_of(sha256)
        await self.delete_entries([(e.module, e.version, e.kind) for e in rows])
        return rows

    async def due_for_check(self, checked_before: float, limit: int) -> list[str]:
        """Blobs last hashed before `checked_before`, longest ago first."""
        async with self.db.execute(
            "SELECT sha256 FROM entries WHERE checked_at < ? ORDER BY checked_at LIMIT ?", (checked_before, limit)
        ) as cur:
            return list(dict.fromkeys(str(r[0]) for r in await cur.fetchall()))

    async def oldest_check(self) -> float | None:
        async with self.db.execute("SELECT MIN(checked_at) FROM entries") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def count_never_checked(self) -> int:
        """Rows whose blob was never hashed since the index was rebuilt."""
        async with self.db.execute("SELECT COUNT(*) FROM entries WHERE checked_at = 0") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def changes_since(self, serial: int, limit: int = 1000, verified_only: bool = False) -> list[Entry]:
        """Rows after `serial`, oldest first. A row that becomes verified gets a new serial
        (mark_verified), so a reader of verified rows sees it then."""
        where = "serial > ? AND unverified = 0" if verified_only else "serial > ?"
        async with self.db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE {where} ORDER BY serial LIMIT ?",
            (serial, limit),
        ) as cur:
            return [entry_from_row(r) for r in await cur.fetchall()]

    async def unverified(self, limit: int = 500) -> list[Entry]:
        async with self.db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE unverified = 1 ORDER BY serial LIMIT ?", (limit,)
        ) as cur:
            return [entry_from_row(r) for r in await cur.fetchall()]

    async def count_unverified(self) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM entries WHERE unverified = 1") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def mark_verified(self, e: Entry) -> Entry | None:
        """The database confirmed the row's h1: clear the mark and give the row a new
        serial (it enters the change log now). None if the row changed meanwhile."""
        await self._journal(journal.Confirmed(e.module, e.version, e.kind, e.sha256))
        async with self._transaction():
            cur = await self.db.execute(
                "DELETE FROM entries WHERE module=? AND version=? AND kind=? AND sha256=? AND unverified=1"
                " RETURNING hits, last_access, checked_at, checked_boot",
                (e.module, e.version, e.kind, e.sha256),
            )
            row = await cur.fetchone()
            if row is None:
                await self.db.rollback()
                return None
            await self.db.execute(
                "INSERT INTO entries (module, version, kind, sha256, size, h1, source, fetched_at, hits, last_access,"
                " checked_at, checked_boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.module,
                    e.version,
                    e.kind,
                    e.sha256,
                    e.size,
                    e.h1,
                    e.source,
                    e.fetched_at,
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                ),
            )
        return await self.get(e.module, e.version, e.kind)

    async def totals(self) -> Totals:
        """The store's running totals: rows, distinct blobs, bytes of distinct blobs (kept
        by triggers: one row read, whatever the size of the index)."""
        async with self.db.execute("SELECT files, blobs, bytes FROM totals WHERE id = 0") as cur:
            row = await cur.fetchone()
        return Totals(*map(int, row)) if row else Totals(0, 0, 0)

    async def recount(self) -> bool:
        """Recompute the running figures from the rows (one full scan: verify, tests);
        True if they had drifted."""
        before = await self.totals()
        async with self.db.execute("SELECT * FROM modules ORDER BY module") as cur:
            modules = await cur.fetchall()
        await self.db.executescript("BEGIN;" + RECOUNT + "COMMIT;")
        async with self.db.execute("SELECT * FROM modules ORDER BY module") as cur:
            drifted = modules != await cur.fetchall()
        return drifted or before != await self.totals()

    def touch(self, module: str, version: str, kind: str, now: float) -> None:
        key = (module, version, kind)
        hits, _ = self._access.get(key, (0, 0.0))
        self._access[key] = (hits + 1, now)

    def access_due(self) -> bool:
        """Whether the stats tick writes the buffered hits now (ACCESS_FLUSH, ACCESS_KEYS)."""
        waiting = len(self._access)
        return waiting >= ACCESS_KEYS or (waiting > 0 and time.monotonic() - self._flushed >= ACCESS_FLUSH)

    async def flush_access(self, checks_only: bool = False) -> None:
        """Write the buffered serve checks (once per blob and run: nothing to gather), then
        unless `checks_only` the hits and last accesses, FLUSH_ROWS rows per transaction."""
        if not checks_only:
            self._flushed = time.monotonic()
        if not ((self._access and not checks_only) or self._checked) or self._db is None:
            return
        batch, self._access = ({}, self._access) if checks_only else (self._access, {})
        checked, self._checked = self._checked, {}
        boot = self.boot
        await self._write_many(
            "UPDATE entries SET checked_at=?, checked_boot=? WHERE sha256=?",
            [(t, boot, sha) for sha, t in checked.items()],
        )
        rows = iter(batch.items())
        while chunk := list(itertools.islice(rows, FLUSH_ROWS)):
            await self._write_many(
                "UPDATE entries SET hits = hits + ?, last_access = MAX(COALESCE(last_access, fetched_at), ?)"
                " WHERE module=? AND version=? AND kind=?",
                [(h, t, m, v, k) for (m, v, k), (h, t) in chunk],
            )

    async def _write_many(self, sql: str, params: list[tuple[object, ...]]) -> None:
        if params:
            async with self._transaction():
                await self.db.executemany(sql, params)
