"""`modmesh export`, the checksum-database part: the records, tiles and tree head
that let a client verify the exported modules offline.

Per database: the records (lookups) of the selected public module versions, the
node's newest verified tree head, and exactly the tiles a client needs to verify
those records offline at that tree head's widths: the tree head's own edge, each
record's proof path, and the proof that each record's tree is a prefix of the
newest one (tiles_needed_for_record / _for_tree_proof). A node serves narrower
partial tiles as prefixes, so this set answers every client whose newest tree is
one of those carried. With `--since-bundle`, also the proof that the earlier
bundle's tree head is a prefix of this one, so an importer that took the earlier
bundle can check the new head offline.

Planning reads only the checksum-database caches (in a thread) and the plan's
versions a page at a time, and adds the members to the plan (export_plan.py); the
bytes are re-read from the caches when the bundle is written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.sumdb import records, tlog
from node.sumdb.cache import SumDBStore
from node.sumdb.client import HEIGHT, SumDB
from node.sumdb.tiles import Tile, tiles_needed_for_record, tiles_needed_for_tree_proof
from node.tools.bundle.export_plan import PAGE, PlanStore, Source
from node.tools.bundle.format import Manifest, ManifestEntry, lookup_member

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

Planned = tuple[int, ManifestEntry, Source]


async def plan_databases(
    node: Node,
    plan: PlanStore,
    previous: Manifest | None,
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> tuple[list[dict[str, Any]], dict[str, SumDBStore]]:
    """Add the members of every database with records of the plan's versions; returns
    each one's manifest description (name, vkey, tree size and hash) and its cache by
    name (the bytes are read from it again when the bundle is written). Problems go
    to `warnings`."""
    infos: list[dict[str, Any]] = []
    for db in node.sumdbs.dbs:
        await _settle(db)
    caches = await asyncio.to_thread(_database_caches, node)
    for i, cache in enumerate(caches):
        prev_tree = _previous_tree(previous, cache.name)
        info = await asyncio.to_thread(_plan_sumdb, cache, 3 * i, plan, prev_tree, unchanged, warnings)
        if info:
            infos.append(info)
    return infos, {c.name: c.store for c in caches}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _settle(db: SumDB) -> None:
    """Let background tile prefetches and upgrades finish (bounded), so the cache
    holds every tile at the newest tree's widths."""
    try:
        await asyncio.wait_for(asyncio.shield(db.idle()), 30)
    except TimeoutError:
        log.warning("checksum database %s: background tile work still running; exporting what is cached", db.name)


def _previous_tree(prev: Manifest | None, name: str) -> records.Tree | None:
    for info in prev.sumdb if prev is not None else []:
        if info.get("name") == name:
            try:
                return records.Tree(int(info["tree_size"]), base64.b64decode(str(info["tree_hash"])))
            except (KeyError, ValueError, TypeError, tlog.TlogError):
                return None
    return None


def _tree_of(signed: bytes) -> records.Tree:
    """The tree in a signed note from our own cache (verified when it was stored)."""
    split = signed.rfind(b"\n\n")
    return records.parse_tree(signed[: split + 1].decode("utf-8"))


@dataclass(frozen=True)
class _DatabaseCache:
    name: str
    store: SumDBStore
    vkey: str | None  # None: found on disk, not configured (its bytes were verified when stored)


def _database_caches(node: Node) -> list[_DatabaseCache]:
    """The configured databases' caches, and any other under <data>/sumdb/ (a node run
    with another --sumdb, or --data without the node's configuration): all of them."""
    out = [_DatabaseCache(db.name, db.store, db.spec.vkey) for db in node.sumdbs.dbs]
    known = {c.name for c in out}
    root = node.config.data / "sumdb"
    for latest in sorted(root.rglob("latest")) if root.is_dir() else []:
        name = latest.parent.relative_to(root).as_posix()
        if latest.is_file() and not any(name == k or name.startswith(k + "/") for k in known):
            store = SumDBStore(latest.parent, node.store.tmp_dir)
            store.open()
            out.append(_DatabaseCache(name, store, None))
            known.add(name)
    return out


def _plan_sumdb(
    db: _DatabaseCache,
    section: int,
    plan: PlanStore,
    prev_tree: records.Tree | None,
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> dict[str, Any]:
    """Tree head, tiles and lookups of one database into sections `section` to +2 of
    the plan (in a thread: file reads, tile planning); its description, or {} if it
    adds nothing."""
    store = db.store
    note = store.latest()
    try:
        latest = _tree_of(note) if note is not None else None
    except (tlog.TlogError, UnicodeDecodeError):
        latest = None
    lookups = _Lookups(db, section + 2, latest, note)
    for page in plan.version_pages():
        plan.add(lookups.plan(page, unchanged, warnings))
    if latest is None or note is None or not lookups.added:
        return {}
    needed = lookups.needed
    if prev_tree is not None and prev_tree.n <= latest.n:
        proof = set(tiles_needed_for_tree_proof(prev_tree, latest, HEIGHT))
        if any(store.tile(t) is None for t in proof - needed):
            warnings.append(
                f"checksum database {db.name}: tiles proving the earlier bundle's tree is a prefix "
                "of this one are not cached"
            )
        else:
            needed |= proof
    tiles: list[Planned] = []
    for t in sorted(needed, key=lambda t: (-t.l, t.n, t.w)):
        data = store.tile(t)
        assert data is not None  # checked above; cached tiles are never removed
        path = f"sumdb/{db.name}/{t.path()}"
        sha = _sha(data)
        if not unchanged(path, sha):
            entry = ManifestEntry(path, "sumdb-tile", len(data), sha, db=db.name)
            tiles.append((section + 1, entry, Source("tile", t.path())))
        if len(tiles) >= PAGE:
            plan.add(tiles)
            tiles = []
    plan.add(tiles)
    supported = ManifestEntry(f"sumdb/{db.name}/supported", "sumdb-supported", 0, _sha(b""), db=db.name)
    head = ManifestEntry(f"sumdb/{db.name}/latest", "sumdb-latest", len(note), _sha(note), db=db.name)
    plan.add([(section, supported, Source("bytes", body=b"")), (section, head, Source("bytes", body=note))])
    return {
        "name": db.name,
        "vkey": db.vkey,
        "tree_size": latest.n,
        "tree_hash": base64.b64encode(latest.hash).decode(),
    }


class _Lookups:
    """One database's records of the exported versions, a page at a time: those a
    client can verify offline from the bundle (their tiles are cached, and `needed`)."""

    def __init__(self, db: _DatabaseCache, section: int, latest: records.Tree | None, note: bytes | None) -> None:
        self.db = db
        self.section = section
        self.latest = latest
        self.note = note
        self.needed: set[Tile] = set()
        self.added = 0
        self._trees: set[int] = set()
        self._leaves: set[int] = set()

    def plan(
        self, versions: list[tuple[str, str]], unchanged: Callable[[str, str], bool], warnings: list[str]
    ) -> list[Planned]:
        db, store, latest = self.db, self.db.store, self.latest
        out: list[Planned] = []
        for module, version in versions:
            reply = store.lookup(module, version)
            if reply is None:
                continue
            what = f"{module}@{version}"
            if latest is None or self.note is None:
                warnings.append(
                    f"checksum database {db.name} has no verified tree head here; record of {what} not exported"
                )
                continue
            try:
                rid, _text, signed = records.split_lookup(reply)
                tree = _tree_of(signed)
                if tree.n > latest.n or rid >= tree.n:
                    raise tlog.TlogError(f"record {rid} / tree {tree.n} do not fit the newest tree {latest.n}")
                tiles: set[Tile] = set()
                if rid >> HEIGHT not in self._leaves:
                    tiles.update(tiles_needed_for_record(latest, HEIGHT, rid))
                if tree.n not in self._trees:
                    tiles.update(tiles_needed_for_tree_proof(tree, latest, HEIGHT))
            except (tlog.TlogError, UnicodeDecodeError) as e:
                warnings.append(
                    f"checksum database {db.name}: cached record of {what} is unreadable ({e}); not exported"
                )
                continue
            missing = sorted(t.path() for t in tiles - self.needed if store.tile(t) is None)
            if missing:
                warnings.append(
                    f"checksum database {db.name}: tiles {', '.join(missing[:3])} are not cached, so {what} "
                    "could not be verified offline from this bundle; its record is left out"
                )
                continue
            self._leaves.add(rid >> HEIGHT)
            self._trees.add(tree.n)
            self.needed |= tiles
            path = lookup_member(db.name, module, version)
            sha = _sha(reply)
            if not unchanged(path, sha):
                entry = ManifestEntry(path, "sumdb-lookup", len(reply), sha, module, version, db=db.name)
                out.append((self.section, entry, Source("lookup")))
                self.added += 1
        return out
