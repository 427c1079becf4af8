"""The index's mutable answers: `@v/list` and `@latest` (`meta`), version queries
(`queries`), and what the store holds of a module (node/cache/meta.py uses them).

A mixin of `Index` (node/cache/index.py), which provides the connection.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from node.cache.rows import MetaEntry


class MetaQueries:
    @property
    def db(self) -> aiosqlite.Connection:
        raise NotImplementedError

    async def _write(self, sql: str, params: Sequence[object]) -> aiosqlite.Cursor:
        raise NotImplementedError

    async def get_meta(self, module: str, kind: str) -> MetaEntry | None:
        async with self.db.execute(
            "SELECT module, kind, body, source, fetched_at FROM meta WHERE module=? AND kind=?",
            (module, kind),
        ) as cur:
            row = await cur.fetchone()
        return MetaEntry(row[0], row[1], bytes(row[2]), row[3], row[4]) if row else None

    async def meta_page(self, after: tuple[str, str] = ("", ""), limit: int = 500) -> list[MetaEntry]:
        """Cached list/latest answers after (module, kind), in that order (export reads
        them a page at a time)."""
        async with self.db.execute(
            "SELECT module, kind, body, source, fetched_at FROM meta WHERE (module, kind) > (?, ?)"
            " ORDER BY module, kind LIMIT ?",
            (*after, limit),
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

    async def delete_stale_meta(self, fetched_before: float) -> int:
        """Drop list/latest answers older than `fetched_before` of modules with no cached files."""
        cur = await self.db.execute(
            "DELETE FROM meta WHERE fetched_at < ? AND NOT EXISTS (SELECT 1 FROM modules WHERE module = meta.module)",
            (fetched_before,),
        )
        await self.db.commit()
        return int(cur.rowcount)
