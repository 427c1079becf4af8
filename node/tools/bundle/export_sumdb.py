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

Planning reads only the checksum-database caches (in a thread); the bytes are
re-read from them when the bundle is written.
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
from node.tools.bundle.format import Manifest, ManifestEntry, lookup_member

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

#: A database member's bytes: in hand (the tree head), or re-read from the
#: (small, immutable) cache file when the bundle is written.
DatabaseSource = bytes | Callable[[], bytes | None]
Member = tuple[ManifestEntry, DatabaseSource]


async def plan_databases(
    node: Node,
    versions: list[tuple[str, str]],
    previous: Manifest | None,
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> tuple[list[Member], list[dict[str, Any]]]:
    """The members of every database with records of `versions`, and each one's
    manifest description (name, vkey, tree size and hash); problems go to `warnings`."""
    members: list[Member] = []
    infos: list[dict[str, Any]] = []
    for db in node.sumdbs.dbs:
        await _settle(db)
    for cache in await asyncio.to_thread(_database_caches, node):
        prev_tree = _previous_tree(previous, cache.name)
        section, info = await asyncio.to_thread(_plan_sumdb, cache, versions, prev_tree, unchanged, warnings)
        members += section
        if info:
            infos.append(info)
    return members, infos


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
    versions: list[tuple[str, str]],
    prev_tree: records.Tree | None,
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> tuple[list[Member], dict[str, Any]]:
    """Lookups, tiles and tree head of one database (in a thread: file reads, tile planning)."""
    store = db.store
    note = store.latest()
    try:
        latest = _tree_of(note) if note is not None else None
    except (tlog.TlogError, UnicodeDecodeError):
        latest = None
    lookups: list[Member] = []
    needed: set[Tile] = set()
    done_trees: set[int] = set()
    done_leaves: set[int] = set()
    for module, version in versions:
        reply = store.lookup(module, version)
        if reply is None:
            continue
        what = f"{module}@{version}"
        if latest is None or note is None:
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
            if rid >> HEIGHT not in done_leaves:
                tiles.update(tiles_needed_for_record(latest, HEIGHT, rid))
            if tree.n not in done_trees:
                tiles.update(tiles_needed_for_tree_proof(tree, latest, HEIGHT))
        except (tlog.TlogError, UnicodeDecodeError) as e:
            warnings.append(f"checksum database {db.name}: cached record of {what} is unreadable ({e}); not exported")
            continue
        missing = sorted(t.path() for t in tiles - needed if store.tile(t) is None)
        if missing:
            warnings.append(
                f"checksum database {db.name}: tiles {', '.join(missing[:3])} are not cached, so {what} "
                "could not be verified offline from this bundle; its record is left out"
            )
            continue
        done_leaves.add(rid >> HEIGHT)
        done_trees.add(tree.n)
        needed |= tiles
        path = lookup_member(db.name, module, version)
        sha = _sha(reply)
        if not unchanged(path, sha):
            lookups.append(
                (
                    ManifestEntry(path, "sumdb-lookup", len(reply), sha, module, version, db=db.name),
                    _loader(store.lookup, module, version),
                )
            )
    if latest is None or note is None or not lookups:
        return [], {}
    if prev_tree is not None and prev_tree.n <= latest.n:
        proof = set(tiles_needed_for_tree_proof(prev_tree, latest, HEIGHT))
        if any(store.tile(t) is None for t in proof - needed):
            warnings.append(
                f"checksum database {db.name}: tiles proving the earlier bundle's tree is a prefix "
                "of this one are not cached"
            )
        else:
            needed |= proof
    tiles_out: list[Member] = []
    for t in sorted(needed, key=lambda t: (-t.l, t.n, t.w)):
        data = store.tile(t)
        assert data is not None  # checked above; cached tiles are never removed
        path = f"sumdb/{db.name}/{t.path()}"
        sha = _sha(data)
        if not unchanged(path, sha):
            tiles_out.append((ManifestEntry(path, "sumdb-tile", len(data), sha, db=db.name), _loader(store.tile, t)))
    head = [
        (ManifestEntry(f"sumdb/{db.name}/supported", "sumdb-supported", 0, _sha(b""), db=db.name), b""),
        (ManifestEntry(f"sumdb/{db.name}/latest", "sumdb-latest", len(note), _sha(note), db=db.name), note),
    ]
    info = {
        "name": db.name,
        "vkey": db.vkey,
        "tree_size": latest.n,
        "tree_hash": base64.b64encode(latest.hash).decode(),
    }
    return head + tiles_out + lookups, info


def _loader(fn: Callable[..., bytes | None], *args: Any) -> Callable[[], bytes | None]:
    return lambda: fn(*args)
