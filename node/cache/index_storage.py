"""The index's reads and writes for storage limits (node/cache/storage.py, eviction.py,
upkeep.py): blobs a batch at a time, the rows that refer to them, deletions, pins.

Every scan here reads a bounded batch per call and resumes after the last key it
returned (keyset pagination on the `blobs` table the triggers keep), so eviction, gc
and verify hold one batch in memory whatever the size of the store.

A mixin of `Index` (node/cache/index.py), which provides the connection and the journal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiosqlite

from node.cache import journal
from node.cache.rows import ENTRY_COLUMNS, Entry, Usage, entry_from_row
from node.golang.patterns import match_prefix_patterns

#: Bound on the parameters of one `IN (...)` (SQLite allows 32766 since 3.32).
IN_BATCH = 500


class StorageQueries:
    @property
    def db(self) -> aiosqlite.Connection:
        raise NotImplementedError

    async def _journal(self, *records: journal.Record) -> None:
        raise NotImplementedError

    # ---- blobs, a batch at a time -------------------------------------------------

    async def blob_batch(self, after: str, limit: int) -> list[tuple[str, int]]:
        """(sha256, size) of the distinct blobs the index refers to, after `after` in
        sha256 order."""
        async with self.db.execute(
            "SELECT sha256, size FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?", (after, limit)
        ) as cur:
            return [(str(s), int(n)) for s, n in await cur.fetchall()]

    async def blob_batches(self, limit: int = 1000) -> AsyncIterator[list[tuple[str, int]]]:
        after = ""
        while batch := await self.blob_batch(after, limit):
            yield batch
            after = batch[-1][0]

    async def usage_between(self, first: str, last: str) -> list[Usage]:
        """What eviction weighs, for every row of the blobs first..last (sha256 order)."""
        async with self.db.execute(
            "SELECT module, version, kind, sha256, size, hits, last_access, fetched_at FROM entries"
            " WHERE sha256 BETWEEN ? AND ? ORDER BY sha256",
            (first, last),
        ) as cur:
            return [Usage(*r) for r in await cur.fetchall()]

    async def entries_between(self, first: str, last: str) -> list[Entry]:
        """Every row of the blobs first..last (sha256 order)."""
        async with self.db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE sha256 BETWEEN ? AND ? ORDER BY sha256, serial",
            (first, last),
        ) as cur:
            return [entry_from_row(r) for r in await cur.fetchall()]

    async def referenced(self, shas: Sequence[str]) -> set[str]:
        """Which of `shas` some row refers to."""
        out: set[str] = set()
        for i in range(0, len(shas), IN_BATCH):
            part = shas[i : i + IN_BATCH]
            marks = ",".join("?" * len(part))
            async with self.db.execute(f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", part) as cur:
                out.update(str(r[0]) for r in await cur.fetchall())
        return out

    async def is_referenced(self, sha256: str) -> bool:
        async with self.db.execute("SELECT 1 FROM blobs WHERE sha256=?", (sha256,)) as cur:
            return await cur.fetchone() is not None

    async def keys_of(self, shas: Sequence[str]) -> list[tuple[str, str, str]]:
        """(module, version, kind) of every row of these blobs."""
        out: list[tuple[str, str, str]] = []
        for i in range(0, len(shas), IN_BATCH):
            part = shas[i : i + IN_BATCH]
            marks = ",".join("?" * len(part))
            async with self.db.execute(
                f"SELECT module, version, kind FROM entries WHERE sha256 IN ({marks})", part
            ) as cur:
                out += [(str(m), str(v), str(k)) for m, v, k in await cur.fetchall()]
        return out

    async def delete_entries(self, keys: Sequence[tuple[str, str, str]]) -> None:
        """Delete (module, version, kind) rows in one transaction."""
        if not keys:
            return
        await self._journal(*(journal.Delete(*k) for k in keys))
        await self.db.executemany("DELETE FROM entries WHERE module=? AND version=? AND kind=?", keys)
        await self.db.commit()

    # ---- pins ---------------------------------------------------------------------

    async def pins(self) -> list[tuple[str, float]]:
        async with self.db.execute("SELECT pattern, created_at FROM pins ORDER BY pattern") as cur:
            return [(str(p), float(t)) for p, t in await cur.fetchall()]

    async def add_pin(self, pattern: str, now: float) -> bool:
        await self._journal(journal.Pin(pattern, now))
        cur = await self.db.execute("INSERT INTO pins VALUES (?, ?) ON CONFLICT (pattern) DO NOTHING", (pattern, now))
        await self.db.commit()
        return bool(cur.rowcount)

    async def remove_pin(self, pattern: str) -> bool:
        await self._journal(journal.Unpin(pattern))
        cur = await self.db.execute("DELETE FROM pins WHERE pattern=?", (pattern,))
        await self.db.commit()
        return bool(cur.rowcount)

    async def pin_usage(self, pattern: str) -> tuple[int, int]:
        """(distinct blobs, their bytes) of the modules a pin pattern matches; SQLite does
        the grouping (on disk when it is large), not a dict of every row."""
        await self.db.create_function("modmesh_match", 2, _match, deterministic=True)
        async with self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE sha256 IN"
            " (SELECT sha256 FROM entries WHERE module IN"
            " (SELECT module FROM modules WHERE modmesh_match(?, module)))",
            (pattern,),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


def _match(pattern: str, module: str) -> bool:
    return match_prefix_patterns(pattern, module)
