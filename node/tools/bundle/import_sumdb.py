"""Importing a bundle's checksum-database data: verify everything, then store it.

The tree head must be signed by the key the node is configured with. Every tile
must hash up to that tree head: the edge tiles first (they make the root), then
parents before children, so a bad tile is named and its children are refused as
unauthenticated. The tree head must extend the node's newest verified tree, or be
a prefix of it; a tree that is neither is a forked database (refused, logged as
a security problem), and one whose relation cannot be proven offline is refused
with what to do. Only then are the tiles stored and the head accepted
(`SumDB.accept`, which re-checks from the stored tiles), and then each lookup:
its own tree head signed and a prefix of the bundle's, its record the leaf at
its id.

Tiles wait in a spool file (not in memory) until they are verified; the hashing
runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.errors import ModmeshError
from node.sumdb import note, records, tiles, tlog
from node.sumdb.cache import SumDBStore
from node.sumdb.client import HEIGHT, ForkDetected, SumDB, record_hashes
from node.sumdb.tiles import Tile, tile_hash_reader, tiles_needed_for_tree_proof
from node.tools.bundle.format import ManifestEntry, Status

log = logging.getLogger(__name__)

LOOKUP_BATCH = 256


class Outcome(Protocol):
    """How a verdict on one entry is reported."""

    def __call__(self, e: ManifestEntry, status: Status, reason: str = "") -> None: ...


class _Spool:
    """Tiles received but not yet verified: one temp file, read back by offset."""

    def __init__(self, tmp_dir: Path) -> None:
        self.path = tmp_dir / f"import-tiles-{secrets.token_hex(8)}.part"
        self._fd: int | None = None
        self._at: dict[Tile, tuple[int, int]] = {}
        self._end = 0

    def put(self, tile: Tile, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.pwrite(self._fd, data, self._end)
        self._at[tile] = (self._end, len(data))
        self._end += len(data)

    def get(self, tile: Tile) -> bytes | None:
        at = self._at.get(tile)
        if at is None or self._fd is None:
            return None
        return os.pread(self._fd, at[1], at[0])

    def tiles(self) -> list[Tile]:
        return list(self._at)

    def discard(self, tile: Tile) -> None:
        self._at.pop(tile, None)

    def clear(self) -> None:
        self._at.clear()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


class _View(Mapping[Tile, bytes]):
    """Tiles for tile_hash_reader: verified spool tiles first, then the node's cache."""

    def __init__(self, spool: _Spool, chosen: set[Tile], store: SumDBStore) -> None:
        self.spool, self.chosen, self.store = spool, chosen, store

    def __getitem__(self, tile: Tile) -> bytes:
        data = self.spool.get(tile) if tile in self.chosen else None
        if data is None:
            data = self.store.tile(tile)
        if data is None:
            raise KeyError(tile)
        return data

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.chosen)

    def __len__(self) -> int:
        return len(self.chosen)


def _width_in(tree: records.Tree, t: Tile) -> int:
    return min(1 << t.h, (tree.n >> (t.l * t.h)) - (t.n << t.h))


def _verify_tiles(tree: records.Tree, spool: _Spool, store: SumDBStore) -> tuple[set[Tile], dict[Tile, str]]:
    """Which spooled tiles hash up to `tree` (the edge first, then parents before
    children); the rest with the reason. Pure CPU and file reads: run in a thread."""
    ok: set[Tile] = set()
    bad: dict[Tile, str] = {}
    view = _View(spool, ok, store)
    todo = spool.tiles()
    for t in todo:
        if t.h != HEIGHT or _width_in(tree, t) != t.w:
            bad[t] = f"not a tile of the bundle's tree head (size {tree.n}) at that width"
    edge = {t for t in tiles_needed_for_tree_proof(tree, tree, HEIGHT) if t in todo and t not in bad}
    ok |= edge
    try:
        tlog.tree_hash(tree.n, tile_hash_reader(tree, HEIGHT, view))
    except (tiles.MissingTiles, tlog.TlogError) as e:
        why = (
            f"the tree head's edge tile {e.tiles[0].path()} is in neither the bundle nor this node"
            if isinstance(e, tiles.MissingTiles)
            else "the tree head's edge tiles do not hash to its root"
        )
        for t in todo:
            bad.setdefault(t, why if t in edge else f"cannot be authenticated: {why}")
        return set(), bad
    for t in sorted(set(todo) - edge - bad.keys(), key=lambda t: (-t.l, t.n)):
        ok.add(t)
        idx = [tlog.stored_hash_index(t.l * HEIGHT, (t.n << HEIGHT) + i) for i in range(t.w)]
        try:
            tile_hash_reader(tree, HEIGHT, view).read_hashes(idx)
        except tiles.MissingTiles as e:
            ok.discard(t)
            bad[t] = f"cannot be authenticated: its parent {e.tiles[0].path()} is in neither the bundle nor this node"
        except tlog.TlogError:
            ok.discard(t)
            bad[t] = "does not hash to the entry its parent tile holds for it"
    return ok, bad


def _check_prefix(old: records.Tree, new: records.Tree, view: Mapping[Tile, bytes]) -> None:
    """TlogError if `old` is not a prefix of `new` (a fork), MissingTiles if unprovable here."""
    reader = tile_hash_reader(new, HEIGHT, view)
    tlog.check_tree(tlog.prove_tree(new.n, old.n, reader), new.n, new.hash, old.n, old.hash)


@dataclass
class _Lookup:
    entry: ManifestEntry
    module: str
    version: str
    reply: bytes


class DatabaseImport:
    """The bundle's data for one checksum database, verified before anything is stored."""

    def __init__(self, db: SumDB, tmp_dir: Path, origin: str, outcome: Outcome) -> None:
        self.db, self.origin, self.outcome = db, origin, outcome
        self.spool = _Spool(tmp_dir)
        self.tile_entries: dict[Tile, ManifestEntry] = {}
        self.head: tuple[ManifestEntry, bytes] | None = None
        self.tree: records.Tree | None = None
        self.refusal: str | None = None
        self.settled = False
        self.lookups: list[_Lookup] = []

    async def add(self, e: ManifestEntry, target: object, data: bytes) -> None:
        if e.kind == "sumdb-supported":
            self.outcome(e, "present")
        elif e.kind == "sumdb-latest":
            if self.head is not None or self.settled:
                self.outcome(e, "refused", "a second tree head for this database, or one after its records")
            else:
                self.head = (e, data)
        elif e.kind == "sumdb-tile":
            assert isinstance(target, Tile)
            if target in self.tile_entries:
                self.outcome(e, "refused", "a second copy of this tile")
                return
            self.tile_entries[target] = e
            if self.settled and self.refusal is not None:
                self.outcome(e, "refused", self.refusal)
                return
            await asyncio.to_thread(self.spool.put, target, data)
            if self.settled:
                await self._tiles()  # out of the usual order: verify against the settled head
        else:
            assert isinstance(target, tuple)
            await self.settle()
            if self.refusal is not None:
                self.outcome(e, "refused", self.refusal)
                return
            self.lookups.append(_Lookup(e, target[0], target[1], data))
            if len(self.lookups) >= LOOKUP_BATCH:
                await self._lookups()

    async def finish(self) -> None:
        await self.settle()
        await self._lookups()
        self.spool.close()

    def _refuse_all(self, reason: str) -> None:
        self.refusal = reason
        if self.head is not None:
            self.outcome(self.head[0], "refused", reason)
        for t in self.spool.tiles():
            self.outcome(self.tile_entries[t], "refused", reason)
        self.spool.clear()

    async def settle(self) -> None:
        """Verify the tree head and the tiles, relate the head to the node's, store."""
        if self.settled:
            return
        self.settled = True
        db = self.db
        if self.head is None:
            if self.spool.tiles():
                self._refuse_all("the bundle carries no tree head for this database")
            else:
                self.refusal = "the bundle carries no tree head for this database"
            return
        signed = self.head[1]
        try:
            tree = records.parse_tree(note.open_note(signed, [db.verifier]).text)
        except (note.NoteError, tlog.TlogError) as e:
            self._refuse_all(f"tree head not signed by this node's key for {db.name}: {e}")
            return
        ok, bad = await asyncio.to_thread(_verify_tiles, tree, self.spool, db.store)
        self._refuse_tiles(bad)
        current = db.latest
        try:
            if current is not None and tree.n > current.n:
                view = _View(self.spool, ok, db.store)
                await asyncio.to_thread(_check_prefix, current, tree, view)
            elif current is not None and tree.n == current.n and tree.hash != current.hash:
                raise tlog.TlogError("same size, different root hash")
            if current is None or tree.n >= current.n:
                await self._store(ok)
                await db.accept(signed)  # every tile its proof needs is stored now
            else:
                await db.accept(signed)  # a prefix of the node's tree: proven with its tiles
                await self._store(ok)
        except (ForkDetected, tlog.TlogError) as e:
            log.error(
                "SECURITY: import %s: checksum database %s: the bundle's tree (size %d) does not "
                "match this node's (size %d): %s",
                self.origin,
                db.name,
                tree.n,
                current.n if current else 0,
                e,
            )
            self._refuse_all(
                f"the bundle's tree head (size {tree.n}) is not consistent with this node's "
                f"verified tree (size {current.n if current else 0}): a forked database?"
            )
            return
        except (tiles.MissingTiles, ModmeshError) as e:
            self._refuse_all(
                f"cannot check offline that the bundle's tree (size {tree.n}) and this node's (size "
                f"{current.n if current else 0}) are one log ({e}): import the bundle exported before "
                "this one first, or import while the database is reachable"
            )
            return
        self.tree = tree
        self.outcome(self.head[0], "admitted" if current is None or tree.n > current.n else "present")

    def _refuse_tiles(self, bad: Mapping[Tile, str]) -> None:
        for t, why in bad.items():
            self.outcome(self.tile_entries[t], "refused", why)
            self.spool.discard(t)

    async def _store(self, ok: set[Tile]) -> None:
        store = self.db.store

        def put_all() -> list[tuple[Tile, bool]]:
            out = []
            for t in sorted(ok, key=lambda t: (-t.l, t.n)):
                fresh = store.width(t.l, t.n) < t.w
                data = self.spool.get(t)
                assert data is not None
                store.put_tile(t, data)
                out.append((t, fresh))
            return out

        for t, fresh in await asyncio.to_thread(put_all):
            self.outcome(self.tile_entries[t], "admitted" if fresh else "present")
        self.spool.clear()

    async def _tiles(self) -> None:
        """Tiles that arrived after the tree head was settled."""
        assert self.tree is not None
        ok, bad = await asyncio.to_thread(_verify_tiles, self.tree, self.spool, self.db.store)
        self._refuse_tiles(bad)
        await self._store(ok)

    async def _lookups(self) -> None:
        batch, self.lookups = self.lookups, []
        if not batch or self.tree is None:
            return
        db, tree = self.db, self.tree
        results = await asyncio.to_thread(_verify_lookups, tree, db, batch)
        for lk, problem in zip(batch, results, strict=True):
            if problem is not None:
                self.outcome(lk.entry, "refused", problem)
                continue
            have = db.store.lookup(lk.module, lk.version)
            if have is None:
                await asyncio.to_thread(db.store.put_lookup, lk.module, lk.version, lk.reply)
                self.outcome(lk.entry, "admitted")
            elif have == lk.reply or records.split_lookup(have)[:2] == records.split_lookup(lk.reply)[:2]:
                self.outcome(lk.entry, "present")
            else:
                log.error(
                    "SECURITY: import %s: checksum database %s: record for %s@%s differs from the one this node has",
                    self.origin,
                    db.name,
                    lk.module,
                    lk.version,
                )
                self.outcome(lk.entry, "refused", "the record differs from the one this node has")


def _verify_lookups(tree: records.Tree, db: SumDB, batch: list[_Lookup]) -> list[str | None]:
    """None for each lookup whose record is the leaf at its id in a tree that is a
    prefix of `tree`, signed by the database's key; else why not. (In a thread.)"""
    reader = tile_hash_reader(tree, HEIGHT, db.store.tiles_view({}))
    trees: dict[bytes, records.Tree | str] = {}
    out: list[str | None] = []
    for lk in batch:
        try:
            rid, text, signed = records.split_lookup(lk.reply)
        except tlog.TlogError as e:
            out.append(f"malformed lookup reply: {e}")
            continue
        own = trees.get(signed)
        if own is None:
            try:
                own = records.parse_tree(note.open_note(signed, [db.verifier]).text)
                if own.n > tree.n:
                    own = f"its tree head (size {own.n}) is newer than the bundle's (size {tree.n})"
                elif tlog.tree_hash(own.n, reader) != own.hash:
                    own = f"its tree head (size {own.n}) is not a prefix of the bundle's"
            except (note.NoteError, tlog.TlogError, tiles.MissingTiles) as e:
                own = f"its tree head does not verify: {e}"
            trees[signed] = own
        if isinstance(own, str):
            out.append(own)
            continue
        if rid >= own.n:
            out.append(f"record {rid} is outside its tree of size {own.n}")
        elif "zip" not in record_hashes(text, lk.module, lk.version):
            out.append(f"record {rid} is not for {lk.module}@{lk.version}")
        else:
            try:
                leaf = reader.read_hashes([tlog.stored_hash_index(0, rid)])[0]
            except tiles.MissingTiles as e:
                out.append(f"cannot be verified: tile {e.tiles[0].path()} is in neither the bundle nor this node")
                continue
            except tlog.TlogError as e:
                out.append(f"tiles do not verify: {e}")
                continue
            out.append(None if leaf == tlog.record_hash(text) else "the record is not the one in the database's log")
    return out
